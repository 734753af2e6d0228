"""``corrigo eval copilot``: does a copilot fix a pilot's mistakes on a task that plain
fine-tuning does not saturate, against the fine-tuned pilot as well as the untuned one, and
what does it cost per token?

Task: two-step arithmetic generated from a seed (evals/copilot_task.py), train / validation /
test splits. Conditions, each answered greedily on the same items through ``corrigo serve``:

- ``pilot``: the embedded SmolLM2-135M-Instruct; ``pilot + copilot``: with a copilot trained on
  its frozen mistake log (``corrigo copilot train``);
- ``fine-tuned``: the pilot fine-tuned on the train split; ``fine-tuned + joint copilot``: with
  the copilot trained jointly with that fine-tuning (``corrigo copilot train --joint``);
  ``fine-tuned + frozen copilot``: with a copilot trained on the fine-tuned pilot's frozen log
  (the same pilot, logged once: does logging every round matter?).

Each copilot's ``lambda`` is chosen on the validation split from ``--lambdas`` (0 included: if
no positive lambda beats the pilot alone there, the copilot is not used) and reported on the
test split with a 95% Wilson interval, and its difference with its own pilot with a 95% paired
bootstrap interval. Per-token overhead: plain vs copilot throughput in interleaved pairs (ABBA:
plain first in odd pairs, copilot first in even ones), every pair kept, with the machine's load
average. Every run is appended to ``copilot.json`` (commit, CPU, load); ``copilot.md`` and
``copilot.png`` are generated from its last run.

Training runs without an engine: ``--work DIR --train-only`` trains (or resumes) the copilots,
and a later run with the same ``--work`` reuses them, so only the serving phase needs the
machine's engine lock.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

from evals.results import BY_HAND, append_run, machine, read_runs, write_page, write_runs
from server.launcher import QUICK_ENGINE, start_server
from server.toml_writer import write_config

from .copilot_task import SPLIT_SIZES, Item, is_right, splits

#: What the results file says of the machine (evals/results.py records the rest).
SHARED = (
    "2 CPU cores shared with other sessions' processes while it ran: throughput moves with "
    "their load (load averages recorded)"
)
#: Condition names, in table order: (pilot key, copilot name or None).
CONDITIONS = {
    "pilot": ("pilot", None),
    "pilot + copilot": ("pilot", "frozen"),
    "fine-tuned": ("tuned", None),
    "fine-tuned + joint copilot": ("tuned", "joint"),
    "fine-tuned + frozen copilot": ("tuned", "tuned_frozen"),
}
#: Tokens an answer may take (a full worked answer is ~30).
ANSWER_TOKENS = 40


def add_parser(evals) -> None:
    parser = evals.add_parser(
        "copilot",
        help="pilot, fine-tuned pilot and each with its copilot on multi-step arithmetic",
        description=__doc__.split("\n\n")[0],
    )
    parser.add_argument("--work", type=Path, help="training folder (default: a temporary one)")
    parser.add_argument("--train-only", action="store_true", help="train or resume, then stop")
    parser.add_argument("--seed", type=int, default=0, help="task and training seed")
    for split, size in SPLIT_SIZES.items():
        parser.add_argument(f"--{split}-items", type=int, default=size)
    parser.add_argument("--pilot-epochs", type=int, default=2)
    parser.add_argument("--pilot-lr", type=float, default=1e-4)
    parser.add_argument("--copilot-steps", type=int, default=60, help="optimiser steps each")
    parser.add_argument(
        "--frozen-control",
        action="store_true",
        help="also a copilot on the fine-tuned pilot's frozen log (one more training and sweep)",
    )
    parser.add_argument("--lr", type=float, default=1e-3, help="copilot learning rate")
    parser.add_argument("--lambdas", default="0,0.5,1,2", help="validation sweep (probs space)")
    parser.add_argument("--concurrency", type=int, default=16, help="for the accuracy runs")
    parser.add_argument("--overhead-concurrency", type=int, default=8)
    parser.add_argument("--overhead-tokens", type=int, default=32)
    parser.add_argument("--overhead-pairs", type=int, default=5, help="ABBA pairs (>= 5)")
    parser.add_argument(
        "--docs", type=Path, default=Path("docs/evals"), help="results folder (default docs/evals)"
    )


# -- statistics ----------------------------------------------------------------------------------


def wilson(right: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion, in percent."""
    if n == 0:
        return (0.0, 100.0)
    p = right / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (round(100 * (centre - half), 1), round(100 * (centre + half), 1))


def paired_bootstrap(a: list[bool], b: list[bool], seed: int = 0, draws: int = 2000) -> list:
    """95% percentile interval of ``mean(b) - mean(a)`` in points, items resampled in pairs."""
    rng = random.Random(seed)
    n = len(a)
    diffs = sorted(
        100 * sum(b[i] - a[i] for i in (rng.randrange(n) for _ in range(n))) / n
        for _ in range(draws)
    )
    return [round(diffs[int(0.025 * draws)], 1), round(diffs[int(0.975 * draws) - 1], 1)]


def cell(right: list[bool]) -> dict:
    return {
        "accuracy": round(100 * sum(right) / len(right), 1),
        "right": sum(right),
        "n": len(right),
        "ci95": list(wilson(sum(right), len(right))),
    }


# -- training --------------------------------------------------------------------------------------


def train_all(args, work: Path) -> dict:
    """Train (or resume) the three copilots and the fine-tuned pilot in ``work``."""
    from adapters.copilot_joint import PILOT_DIR, JointSettings, train_joint
    from adapters.copilot_training import TrainSettings, train

    items = task(args)
    data = work / "train.jsonl"
    work.mkdir(parents=True, exist_ok=True)
    data.write_text(
        "".join(
            json.dumps({"prompt": i.prompt, "response": i.response}) + "\n" for i in items["train"]
        )
    )
    settings = TrainSettings(
        lr=args.lr, epochs=1000, max_steps=args.copilot_steps, seed=args.seed, device="auto"
    )
    joint = JointSettings(epochs=args.pilot_epochs, lr=args.pilot_lr)
    seconds = {}
    started = time.perf_counter()
    frozen = [loss for _, loss in train("embedded", data, work / "frozen", settings)]
    seconds["frozen"] = time.perf_counter() - started
    started = time.perf_counter()
    joint_losses = [
        loss for _, loss in train_joint("embedded", data, work / "joint", settings, joint)
    ]
    seconds["joint"] = time.perf_counter() - started
    tuned = work / "joint" / PILOT_DIR
    tuned_frozen = []
    if args.frozen_control:
        started = time.perf_counter()
        tuned_frozen = [
            loss for _, loss in train(str(tuned), data, work / "tuned_frozen", settings)
        ]
        seconds["tuned_frozen"] = time.perf_counter() - started
    return {
        "settings": asdict(settings),
        "joint": asdict(joint),
        # A resumed run has no losses left to report for phases already done.
        "rmse_last": {
            "frozen": frozen[-1] if frozen else None,
            "joint": joint_losses[-1] if joint_losses else None,
            "tuned_frozen": tuned_frozen[-1] if tuned_frozen else None,
        },
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
    }


def task(args) -> dict[str, list[Item]]:
    sizes = {"train": args.train_items, "val": args.val_items, "test": args.test_items}
    return splits(args.seed, sizes)


# -- serving ---------------------------------------------------------------------------------------


def answers(client, model: str, items: list[Item], correction, concurrency: int) -> list[bool]:
    def one(item: Item) -> bool:
        r = client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": item.prompt}],
            max_tokens=ANSWER_TOKENS,
            temperature=0,
            extra_body={"correction": correction} if correction else {},
        )
        return is_right(r.choices[0].message.content or "", item)

    with ThreadPoolExecutor(concurrency) as pool:
        return list(pool.map(one, items))


def throughput(client, model, items: list[Item], correction, concurrency: int, tokens: int):
    """Generated tokens per second over ``max(4, 2 * concurrency)`` requests (``ignore_eos``)."""

    def one(item: Item) -> int:
        extra = {"ignore_eos": True, **({"correction": correction} if correction else {})}
        r = client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": item.prompt}],
            max_tokens=tokens,
            temperature=0,
            extra_body=extra,
        )
        return r.usage.completion_tokens

    batch = items[: max(4, 2 * concurrency)]
    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        generated = sum(pool.map(one, batch))
    return generated / (time.perf_counter() - started)


def overhead(client, model, items, correction, concurrency: int, tokens: int, pairs: int):
    """ABBA pairs of plain (A) and copilot (B) throughput; every pair and the median."""
    throughput(client, model, items, correction, concurrency, tokens)  # warm-up
    runs = []
    for p in range(pairs):
        order = ("plain", "copilot") if p % 2 == 0 else ("copilot", "plain")
        tok_s = {}
        for side in order:
            fix = correction if side == "copilot" else None
            tok_s[side] = throughput(client, model, items, fix, concurrency, tokens)
        runs.append(
            {
                "order": "AB" if p % 2 == 0 else "BA",
                "plain_tok_s": round(tok_s["plain"], 1),
                "copilot_tok_s": round(tok_s["copilot"], 1),
                "overhead_pct": round(100 * (tok_s["plain"] / tok_s["copilot"] - 1), 1),
                "load_average_1m": round(os.getloadavg()[0], 2),
            }
        )
    return {
        "pairs": runs,
        "median_overhead_pct": round(statistics.median(r["overhead_pct"] for r in runs), 1),
        "min_overhead_pct": min(r["overhead_pct"] for r in runs),
        "max_overhead_pct": max(r["overhead_pct"] for r in runs),
    }


def serve_and_score(args, work: Path, pilot_key: str, copilots: list[str], items) -> dict:
    """One server for one pilot and its copilots: validation sweep, test answers, and
    (for the fine-tuned pilot) the overhead."""
    from openai import OpenAI

    from adapters.copilot_joint import PILOT_DIR

    sections: dict = {"engine": {**QUICK_ENGINE, "max_model_len": 512}}
    if pilot_key == "tuned":
        sections["model"] = {"path": str(work / "joint" / PILOT_DIR)}
    for name in copilots:
        sections[f"copilots.{name}"] = {"path": str(work / name)}
    config = write_config(work / f"serve-{pilot_key}.toml", sections)
    server = start_server(config, work / f"server-{pilot_key}.log")
    lambdas = [float(x) for x in args.lambdas.split(",")]
    out: dict = {"val": {}, "test": {}, "lambda": {}}
    try:
        client = OpenAI(base_url=f"{server.base_url}/v1", api_key="-", max_retries=0, timeout=600)
        model = client.models.list().data[0].id
        c = args.concurrency
        plain_val = answers(client, model, items["val"], None, c)
        out["test"][None] = answers(client, model, items["test"], None, c)
        for name in copilots:
            sweep = {}
            for lam in lambdas:
                fix = {"copilot": {"name": name, "lambda": lam, "space": "probs"}}
                right = plain_val if lam == 0 else answers(client, model, items["val"], fix, c)
                sweep[lam] = right
                print(f"{pilot_key}+{name} val lambda={lam:g}: {cell(right)['accuracy']}%")
            # Ties go to the smaller lambda (0: the copilot is not used).
            best = max(lambdas, key=lambda lam: (sum(sweep[lam]), -lam))
            out["val"][name] = {f"{lam:g}": cell(sweep[lam]) for lam in lambdas}
            out["lambda"][name] = best
            fix = {"copilot": {"name": name, "lambda": best, "space": "probs"}}
            out["test"][name] = (
                out["test"][None] if best == 0 else answers(client, model, items["test"], fix, c)
            )
        out["val"][None] = cell(plain_val)
        if pilot_key == "tuned":
            name = "joint"
            lam = out["lambda"][name] or 1.0  # lambda 0 would skip the fusion, not the copilot
            fix = {"copilot": {"name": name, "lambda": lam, "space": "probs"}}
            out["overhead"] = {"copilot": name, "lambda": lam, "tokens": args.overhead_tokens}
            for conc in sorted({1, args.overhead_concurrency}):
                out["overhead"][f"c={conc}"] = overhead(
                    client,
                    model,
                    items["test"],
                    fix,
                    conc,
                    args.overhead_tokens,
                    args.overhead_pairs,
                )
                print(f"overhead c={conc}: {out['overhead'][f'c={conc}']['median_overhead_pct']}%")
    finally:
        server.stop()
    return out


def run(args: argparse.Namespace) -> int:
    if args.overhead_pairs < 5:
        raise SystemExit("corrigo eval copilot: --overhead-pairs must be at least 5")
    work = args.work or Path(tempfile.mkdtemp(prefix="corrigo-eval-copilot-"))
    started = time.perf_counter()
    meta = machine()
    training = train_all(args, work)
    if args.train_only:
        print(f"corrigo: trained in {work}; rerun without --train-only to evaluate")
        return 0
    items = task(args)
    scored = {
        "pilot": serve_and_score(args, work, "pilot", ["frozen"], items),
        "tuned": serve_and_score(
            args, work, "tuned", ["joint"] + ["tuned_frozen"] * args.frozen_control, items
        ),
    }
    results = {
        "machine_note": SHARED,
        # Under heavy sharing one torch thread per process ran the training ~4x faster than two.
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "command": "corrigo eval copilot " + " ".join(_flags(args)),
        "task": {
            "generator": "evals/copilot_task.py",
            "seed": args.seed,
            "items": {k: len(v) for k, v in items.items()},
        },
        "training": training,
        **summarise(scored, items),
        "overhead": scored["tuned"]["overhead"],
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    path = args.docs / "copilot.json"
    keep_legacy(path)
    write_docs(args.docs, append_run(path, results, meta))
    print(json.dumps({k: results[k] for k in ("test", "differences")}, indent=2))
    return 0


def summarise(scored: dict, items) -> dict:
    """Per condition: validation and test cells and the lambda; per copilot: its test
    difference with its own pilot (paired bootstrap)."""
    test, val, lambdas, diffs = {}, {}, {}, {}
    for label, (pilot, name) in CONDITIONS.items():
        if name not in scored[pilot]["test"]:
            continue  # the frozen control, not asked for
        test[label] = cell(scored[pilot]["test"][name])
        val[label] = scored[pilot]["val"][name] if name else scored[pilot]["val"][None]
        if name:
            lambdas[label] = scored[pilot]["lambda"][name]
            base = scored[pilot]["test"][None]
            mine = scored[pilot]["test"][name]
            diffs[label] = {
                "points": round(100 * (sum(mine) - sum(base)) / len(base), 1),
                "ci95": paired_bootstrap(base, mine),
                "fixed": sum(1 for a, b in zip(base, mine, strict=True) if b and not a),
                "broken": sum(1 for a, b in zip(base, mine, strict=True) if a and not b),
            }
    tuned_vs_pilot = {
        "points": round(test["fine-tuned"]["accuracy"] - test["pilot"]["accuracy"], 1),
        "ci95": paired_bootstrap(scored["pilot"]["test"][None], scored["tuned"]["test"][None]),
    }
    return {
        "val": val,
        "lambda": lambdas,
        "test": test,
        "differences": diffs,
        "fine_tuning": tuned_vs_pilot,
    }


def _flags(args) -> list[str]:
    keys = ("seed", "pilot_epochs", "pilot_lr", "copilot_steps", "lr", "lambdas", "concurrency")
    keys += ("overhead_concurrency", "overhead_tokens", "overhead_pairs")
    flags = [f"--{k.replace('_', '-')} {getattr(args, k)}" for k in keys]
    flags += [f"--{s}-items {getattr(args, f'{s}_items')}" for s in SPLIT_SIZES]
    return flags + ["--frozen-control"] * args.frozen_control


def keep_legacy(path: Path) -> None:
    """The results file of the eval before runs were kept (one bare result) becomes the first
    run of a results file, marked ``legacy`` (nothing measured is dropped)."""
    if path.exists():
        data = json.loads(path.read_text())
        if isinstance(data, dict) and "runs" not in data:
            write_runs(path, [{"legacy": "sentiment-label task, before issue 15", **data}])
    read_runs(path)  # anything else that is not a results file is refused here


# -- the page ---------------------------------------------------------------------------------------


def verdicts(run: dict) -> list[str]:
    """One plain sentence per copilot: helps (interval above 0), hurts (below) or no
    measurable effect (interval across 0), and whether lambda 0 won on validation."""
    out = []
    for label, d in run["differences"].items():
        lo, hi = d["ci95"]
        lam = run["lambda"][label]
        if lam == 0:
            out.append(
                f"**{label}: does not help.** No positive lambda beat the pilot alone on the "
                "validation split, so lambda 0 was chosen and the test answers are the pilot's."
            )
        elif lo > 0:
            out.append(
                f"**{label}: helps** at lambda {lam:g}: {d['points']:+.1f} points on test "
                f"(95% interval {lo:+.1f} to {hi:+.1f}; {d['fixed']} answers fixed, "
                f"{d['broken']} broken)."
            )
        elif hi < 0:
            out.append(
                f"**{label}: hurts** at lambda {lam:g} (chosen on validation): {d['points']:+.1f} "
                f"points on test (95% interval {lo:+.1f} to {hi:+.1f}; {d['fixed']} fixed, "
                f"{d['broken']} broken)."
            )
        else:
            out.append(
                f"**{label}: no measurable effect** at lambda {lam:g}: {d['points']:+.1f} points "
                f"on test, 95% interval {lo:+.1f} to {hi:+.1f} includes 0 ({d['fixed']} answers "
                f"fixed, {d['broken']} broken)."
            )
    return out


def write_docs(folder: Path, runs: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run = runs[-1]
    index = len(runs) - 1
    test = run["test"]
    names = list(test)
    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    acc = [test[n]["accuracy"] for n in names]
    err = [
        [a - test[n]["ci95"][0] for a, n in zip(acc, names, strict=True)],
        [test[n]["ci95"][1] - a for a, n in zip(acc, names, strict=True)],
    ]
    colours = ["grey", "tab:blue", "dimgrey", "tab:orange", "tab:green"]
    ax.bar(range(len(names)), acc, yerr=err, capsize=4, color=colours[: len(names)])
    ax.set_xticks(range(len(names)), [n.replace(" + ", "\n+ ") for n in names], fontsize=8)
    ax.set_ylabel("test accuracy (%), 95% interval")
    ax.set_title(f"SmolLM2-135M, two-step arithmetic ({run['task']['items']['test']} test items)")
    for i, a in enumerate(acc):
        ax.text(i, a + 1, f"{a:.1f}", ha="center", fontsize=8)
    fig.tight_layout()
    fig.savefig(folder / "copilot.png", dpi=110)
    plt.close(fig)

    rows = []
    for n in names:
        lam = run["lambda"].get(n)
        val = run["val"][n]
        val_acc = val["accuracy"] if "accuracy" in val else val[f"{lam:g}"]["accuracy"]
        lo, hi = test[n]["ci95"]
        rows.append(
            f"| {n} | {'-' if lam is None else f'{lam:g}'} | {val_acc} | "
            f"{test[n]['accuracy']} ({test[n]['right']}/{test[n]['n']}) | {lo}-{hi} |"
        )
    sweeps = [
        f"| {n} | " + ", ".join(f"{k}: {v['accuracy']}" for k, v in run["val"][n].items()) + " |"
        for n in run["lambda"]
    ]
    over = []
    for key, o in run["overhead"].items():
        if not key.startswith("c="):
            continue
        pairs = "; ".join(
            f"{p['order']} {p['plain_tok_s']}/{p['copilot_tok_s']} ({p['overhead_pct']:+.1f}%, "
            f"load {p['load_average_1m']})"
            for p in o["pairs"]
        )
        over.append(
            f"| {key[2:]} | **{o['median_overhead_pct']:+.1f}** | {o['min_overhead_pct']:+.1f} to "
            f"{o['max_overhead_pct']:+.1f} | {pairs} |"
        )
    ft = run["fine_tuning"]
    tuned_acc = test["fine-tuned"]["accuracy"]
    saturation = (
        f"plain fine-tuning saturates the task here ({tuned_acc}%): little is left to correct"
        if tuned_acc >= 95
        else f"plain fine-tuning leaves {100 - tuned_acc:.1f}% of the test items wrong"
    )
    control = (
        " *Frozen copilot* of the fine-tuned pilot: trained on the fine-tuned pilot's frozen "
        "log (does logging every round matter?)."
        if "fine-tuned + frozen copilot" in test
        else ""
    )
    flags = run["bf16_flags"]
    bf16 = "unknown" if flags is None else ", ".join(flags) or "none"
    load_before = ", ".join(f"{x:.2f}" for x in run["load_average_before"])
    load_after = ", ".join(f"{x:.2f}" for x in run["load_average_after"])
    page = f"""# Copilot rectification: pilot, fine-tuned pilot and each with its copilot

Generated by `corrigo eval copilot` from the last run in [copilot.json](copilot.json)
(run {index}, started {run["started"]}, commit `{run["commit"]}`; {len(runs)} runs kept there).
Regenerated by each run; do not edit above the line at the end.

    {run["command"]}

**Task** (`{run["task"]["generator"]}`, seed {run["task"]["seed"]}): two-step integer arithmetic
worked step by step, e.g. `Compute (47 - 18) * 6.` -> `47 - 18 = 29. 29 * 6 = 174. Answer: 174`;
{run["task"]["items"]["train"]} train / {run["task"]["items"]["val"]} validation /
{run["task"]["items"]["test"]} test items, disjoint. Right when the integer after "Answer:" (else
the last integer) is the result. Greedy decoding, at most {ANSWER_TOKENS} tokens.

**Models.** Pilot: the embedded SmolLM2-135M-Instruct. Fine-tuned: the pilot fine-tuned on the
train split for {run["training"]["joint"]["epochs"]} epochs (lr {run["training"]["joint"]["lr"]:g})
by `corrigo copilot train --joint`, which also trains the *joint copilot* on the pilot's mistakes
logged at every round of that fine-tuning. *Copilot*: trained on the untuned pilot's frozen
log.{control} Every copilot: {run["training"]["settings"]["max_steps"]} steps, fusion in `probs` space (the paper's),
lambda chosen on the validation split from 0 and the positive values below (0 = not used).

| condition | lambda (val) | val acc (%) | test acc (%) | test 95% interval (Wilson) |
|---|---|---|---|---|
{chr(10).join(rows)}

![test accuracy](copilot.png)

## Where the copilot helps and where it does not

Differences on the same test items, with the pilot it corrects (95% paired bootstrap
interval):

{chr(10).join("- " + v for v in verdicts(run))}

Fine-tuning alone: {ft["points"]:+.1f} points over the pilot (95% interval {ft["ci95"][0]:+.1f} to
{ft["ci95"][1]:+.1f}); {saturation}.

Validation sweeps (accuracy % per lambda):

| copilot | lambda: accuracy |
|---|---|
{chr(10).join(sweeps)}

## Per-token overhead

Fine-tuned pilot served alone (A) vs with its joint copilot (B, lambda {run["overhead"]["lambda"]:g}):
chat completions, `ignore_eos`, {run["overhead"]["tokens"]} tokens per request, max(4, 2 x
concurrency) requests per run, after one warm-up run. Pairs interleaved ABBA (AB, BA, AB, ...) so drift in the machine's
speed falls on both sides; overhead = plain tok/s / copilot tok/s - 1, every pair listed as
plain/copilot tok/s.

| concurrency | median overhead (%) | range (%) | every pair |
|---|---|---|---|
{chr(10).join(over)}

**Machine:** {run["cpu"]}, {run["cores"]} cores, bf16 CPU flags: {bf16}. {run["machine_note"]};
load average (1, 5, 15 min) {load_before} at the start and {load_after} at the end, and each
pair's 1-minute load above. Throughput measured on a shared machine moves between runs; the
pairs show how much. Wall time of the whole run: {run["wall_seconds"]:.0f} s.

{BY_HAND}
"""
    write_page(folder / "copilot.md", page)
