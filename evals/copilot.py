"""``corrigo eval copilot``: does a copilot trained on the pilot's mistakes fix them on
held-out items, and what does it cost per token?

Task (``evals/suites/copilot/``): one-word sentiment labels for short reviews, where the
embedded SmolLM2-135M-Instruct answers many negative reviews with "The review is a positive
one". Steps:

1. train a copilot on the mistake log of the train split only (``corrigo copilot train``);
2. serve the pilot with it (``corrigo serve``, eager engine) and answer every held-out item
   greedily: pilot alone, then pilot + copilot for each ``lambda`` of the sweep; an answer is
   right when its first word is the label;
3. per-token overhead: generated tokens/s, plain vs with the copilot, at concurrency 1 and 8;
4. results JSON, a markdown table and a plot in ``--docs`` (default docs/evals/).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from decoding.copilot.params import SPACES
from server.launcher import QUICK_ENGINE, start_server
from server.toml_writer import write_config

SUITE = Path(__file__).parent / "suites" / "copilot"


def add_parser(evals) -> None:
    parser = evals.add_parser(
        "copilot",
        help="train a copilot on the pilot's mistakes and measure held-out accuracy and overhead",
        description=__doc__.split("\n\n")[0],
    )
    parser.add_argument("--out", type=Path, help="copilot folder (default: a temporary one)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--max-steps", type=int)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--lambdas", default="0.5,1,2", help="comma-separated sweep (probs space)")
    parser.add_argument("--space", choices=SPACES, default="probs")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--overhead-tokens", type=int, default=64)
    parser.add_argument(
        "--overhead-repeats", type=int, default=3, help="plain/copilot run pairs (median kept)"
    )
    parser.add_argument(
        "--docs", type=Path, default=Path("docs/evals"), help="results folder (default docs/evals)"
    )


def load_split(name: str) -> list[dict[str, str]]:
    """The ``{"prompt", "response"}`` items of the suite's ``train`` or ``heldout`` split."""
    return [json.loads(line) for line in (SUITE / f"{name}.jsonl").open()]


def first_word(text: str) -> str:
    """The answer's first word, lower-cased: what is compared with the label."""
    match = re.match(r"\W*(\w+)", text)
    return match.group(1).lower() if match else ""


def accuracy(client, model: str, items, correction, concurrency: int) -> float:
    def answer(item) -> bool:
        extra = {"correction": correction} if correction else {}
        r = client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": item["prompt"]}],
            max_tokens=4,
            temperature=0,
            extra_body=extra,
        )
        return first_word(r.choices[0].message.content or "") == item["response"].lower()

    with ThreadPoolExecutor(concurrency) as pool:
        right = list(pool.map(answer, items))
    return 100.0 * sum(right) / len(right)


def throughput(client, model: str, items, correction, concurrency: int, tokens: int) -> float:
    """Generated tokens per second over ``2 * concurrency`` requests (``ignore_eos``)."""

    def one(item) -> int:
        extra = {"ignore_eos": True, **({"correction": correction} if correction else {})}
        r = client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": item["prompt"]}],
            max_tokens=tokens,
            temperature=0,
            extra_body=extra,
        )
        return r.usage.completion_tokens

    batch = items[: 2 * concurrency]
    one(batch[0])  # warm-up
    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        generated = sum(pool.map(one, batch))
    return generated / (time.perf_counter() - started)


def copilot_step_seconds(base_url: str) -> tuple[float, float]:
    """Total seconds and steps of the copilot plugin so far (``corrigo_plugin_step_seconds``)."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    totals = {"_sum": 0.0, "_count": 0.0}
    for family in text_string_to_metric_families(httpx.get(f"{base_url}/metrics").text):
        for sample in family.samples:
            suffix = sample.name.removeprefix("corrigo_plugin_step_seconds")
            if suffix in totals and sample.labels.get("plugin") == "copilot":
                totals[suffix] = sample.value
    return totals["_sum"], totals["_count"]


def overhead_run(client, model, items, correction, concurrency, tokens, server) -> dict:
    """One plain then one copilot throughput run, back to back (the machine's load drifts),
    with the copilot's own time per engine step from the server's metrics."""
    plain = throughput(client, model, items, None, concurrency, tokens)
    seconds, steps = copilot_step_seconds(server.base_url)
    fixed = throughput(client, model, items, correction, concurrency, tokens)
    seconds_after, steps_after = copilot_step_seconds(server.base_url)
    return {
        "plain_tok_s": round(plain, 1),
        "copilot_tok_s": round(fixed, 1),
        "per_token_overhead_pct": round(100 * (plain / fixed - 1), 1),
        "copilot_ms_per_step": round(
            1e3 * (seconds_after - seconds) / max(steps_after - steps, 1), 2
        ),
    }


def run(args: argparse.Namespace) -> int:
    from openai import OpenAI

    from adapters.copilot_training import TrainSettings, train

    tmp = Path(tempfile.mkdtemp(prefix="corrigo-eval-copilot-"))
    out = args.out or tmp / "copilot"
    settings = TrainSettings(
        lr=args.lr, epochs=args.epochs, max_steps=args.max_steps, space=args.space
    )
    started = time.perf_counter()
    losses = [loss for _, loss in train("embedded", SUITE / "train.jsonl", out, settings)]
    train_seconds = time.perf_counter() - started

    config = write_config(
        tmp / "corrigo.toml",
        {"engine": {**QUICK_ENGINE, "max_model_len": 512}, "copilots.eval": {"path": str(out)}},
    )
    server = start_server(config, tmp / "server.log")
    results: dict = {
        "train_items": len(load_split("train")),
        "heldout_items": len(load_split("heldout")),
        "train_steps": len(losses),
        "train_seconds": round(train_seconds, 1),
        "rmse_first": losses[0] if losses else None,
        "rmse_last": losses[-1] if losses else None,
        "space": args.space,
    }
    try:
        client = OpenAI(base_url=f"{server.base_url}/v1", api_key="-", max_retries=0, timeout=600)
        model = client.models.list().data[0].id
        held, train_items = load_split("heldout"), load_split("train")
        lambdas = [float(x) for x in args.lambdas.split(",")]
        results["heldout"] = {"pilot": accuracy(client, model, held, None, args.concurrency)}
        results["train"] = {"pilot": accuracy(client, model, train_items, None, args.concurrency)}
        for lam in lambdas:
            correction = {"copilot": {"name": "eval", "lambda": lam, "space": args.space}}
            key = f"copilot lambda={lam:g}"
            results["heldout"][key] = accuracy(client, model, held, correction, args.concurrency)
            print(f"held-out {key}: {results['heldout'][key]:.1f}%", flush=True)
        best = max(lambdas, key=lambda lam: results["heldout"][f"copilot lambda={lam:g}"])
        correction = {"copilot": {"name": "eval", "lambda": best, "space": args.space}}
        results["train"][f"copilot lambda={best:g}"] = accuracy(
            client, model, train_items, correction, args.concurrency
        )
        results["overhead"] = {}
        for c in sorted({1, args.concurrency}):
            runs = [
                overhead_run(client, model, held, correction, c, args.overhead_tokens, server)
                for _ in range(args.overhead_repeats)
            ]
            median = sorted(runs, key=lambda r: r["per_token_overhead_pct"])[len(runs) // 2]
            results["overhead"][f"c={c}"] = {**median, "runs": runs}
            print(f"overhead c={c}: {median}", flush=True)
    finally:
        server.stop()
    write_docs(args.docs, results, args)
    json.dump(results, sys.stdout, indent=2)
    print()
    return 0


def write_docs(folder: Path, results: dict, args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "copilot.json").write_text(json.dumps(results, indent=2) + "\n")
    held = results["heldout"]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    names = list(held)
    ax.bar(names, [held[n] for n in names], color=["grey"] + ["tab:blue"] * (len(names) - 1))
    ax.set_ylabel("held-out accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title("SmolLM2-135M sentiment labels: pilot vs pilot + copilot")
    for i, n in enumerate(names):
        ax.text(i, held[n] + 1, f"{held[n]:.1f}", ha="center")
    plt.xticks(rotation=15)
    fig.tight_layout()
    fig.savefig(folder / "copilot.png", dpi=110)
    rows = "\n".join(f"| {n} | {v:.1f} |" for n, v in held.items())
    over = "\n".join(
        f"| {c} | {v['plain_tok_s']} | {v['copilot_tok_s']} | {v['per_token_overhead_pct']} "
        f"| {v['copilot_ms_per_step']} | "
        + ", ".join(str(r["per_token_overhead_pct"]) for r in v["runs"])
        + " |"
        for c, v in results["overhead"].items()
    )
    (folder / "copilot.md").write_text(
        f"""# Copilot rectification: held-out accuracy and overhead

Command (2 CPU cores, eager engine, fp32; about 9 minutes):

    corrigo eval copilot --epochs {args.epochs} --lambdas {args.lambdas} --space {args.space}

Task: `evals/suites/copilot/` ({results["train_items"]} train / {results["heldout_items"]} held-out
items): label a short review Positive or Negative in one word; right when the answer's first
word is the label. The copilot was trained on the embedded SmolLM2-135M-Instruct's mistake log
over the train split only ({results["train_steps"]} steps, {results["train_seconds"]} s; RMSE
{results["rmse_first"]:.4g} -> {results["rmse_last"]:.4g}).

| held-out | accuracy (%) |
|---|---|
{rows}

Train split: {json.dumps(results["train"])}

![held-out accuracy](copilot.png)

Per-token overhead (chat completions, `ignore_eos`, {args.overhead_tokens} tokens; {args.overhead_repeats}
plain/copilot run pairs back to back, the median pair shown; copilot time per engine step from
`corrigo_plugin_step_seconds`):

| concurrency | plain tok/s | with copilot tok/s | overhead per token (%) | copilot ms/step | all pairs (%) |
|---|---|---|---|---|---|
{over}
"""
    )
