"""``corrigo eval proxy-tuning``: the proxy-tuning experiment (Liu et al. 2024) at small scale.

Base: the embedded SmolLM2-135M-Instruct. Task: ``evals/suites/copilot/`` (one-word sentiment
labels; train / held-out splits). Stages, each cached in ``--work-dir`` (rerun to resume; run
one with ``--stages NAME``):

1. ``anti``: the anti-expert, SmolLM2's first ``--anti-layers`` decoder layers + final norm +
   tied embeddings/head, distilled on SmolLM2's own next-token distributions (KL) over
   chat-formatted prompts that ship with the project (refinement suites and the task's train
   prompts, never their labels) followed by SmolLM2's greedy answers;
2. ``expert``: the anti-expert fine-tuned on the train split (loss on response tokens only);
3. ``direct``: SmolLM2 itself fully fine-tuned on the same split (the upper bound);
4. ``inprocess``: transformers greedy decoding of the held-out items (and the general-ability
   questions) by the expert, the anti-expert, the directly tuned model and, as a cross-check,
   the base;
5. ``server``: ``corrigo serve`` with ``[aux_models]`` expert and anti; base alone and
   proxy-tuned base (``correction.proxy_tuning``, each alpha of the sweep) through the OpenAI
   SDK, greedy, on the held-out items and on the general-ability questions (the unlearning
   eval's retain questions and probes, scored as there);
6. ``docs``: JSON, markdown table and plot in ``--docs``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from adapters.default_model import ensure_default_model
from decoding.cache import cache_dir

from .copilot import first_word, load_split
from .server import local_server
from .unlearning import FACTS, ask_all, load_facts

STAGES = ("anti", "expert", "direct", "inprocess", "server", "docs")
RESUMING = ("server", "docs")
#: Prompts the anti-expert is distilled on, besides the task's train prompts.
DISTIL_SUITES = Path(__file__).parent / "suites" / "refinement"
TASK_TOKENS = 4
GENERAL_TOKENS = 32


def add_parser(evals) -> None:
    parser = evals.add_parser(
        "proxy-tuning",
        help="proxy-tune SmolLM2 with a small expert/anti-expert pair and compare with tuning it",
        description=__doc__.split("\n\n")[0],
    )
    parser.add_argument(
        "--work-dir",
        type=Path,
        help="where models and stage results are cached "
        "(default: ~/.cache/corrigo/evals/proxy-tuning)",
    )
    parser.add_argument(
        "--stages", default=",".join(STAGES), help=f"comma-separated subset of {STAGES}"
    )
    parser.add_argument("--force", action="store_true", help="redo the stages even if cached")
    parser.add_argument("--anti-layers", type=int, default=4, help="decoder layers kept (of 30)")
    parser.add_argument("--distil-epochs", type=int, default=2)
    parser.add_argument("--distil-lr", type=float, default=5e-4)
    parser.add_argument("--expert-epochs", type=int, default=3)
    parser.add_argument("--expert-lr", type=float, default=2e-4)
    parser.add_argument("--direct-epochs", type=int, default=2)
    parser.add_argument("--direct-lr", type=float, default=2e-5)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--alphas", default="0.1,0.25,0.5,1,2", help="comma-separated alpha sweep")
    parser.add_argument(
        "--docs", type=Path, default=Path("docs/evals"), help="results folder (default docs/evals)"
    )


def run(args: argparse.Namespace) -> int:
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    work = args.work_dir or cache_dir() / "evals" / "proxy-tuning"
    (work / "stages").mkdir(parents=True, exist_ok=True)
    wanted = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = set(wanted) - set(STAGES)
    if unknown:
        print(f"corrigo: unknown stages {sorted(unknown)}; choose from {STAGES}", file=sys.stderr)
        return 2
    for name in STAGES:
        record = work / "stages" / f"{name}.json"
        # The server stage resumes itself (it adds the systems it has not measured yet).
        if name not in wanted or (record.exists() and not args.force and name not in RESUMING):
            continue
        print(f"== stage {name}", flush=True)
        before = json.loads(record.read_text()) if record.exists() and not args.force else {}
        wall, cpu = time.perf_counter(), time.process_time()
        result = STAGE_FUNCTIONS[name](args, work, before)
        result["wall_seconds"] = round(
            before.get("wall_seconds", 0) + time.perf_counter() - wall, 1
        )
        result["cpu_seconds"] = round(before.get("cpu_seconds", 0) + time.process_time() - cpu, 1)
        if name != "docs":
            record.write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps({k: v for k, v in result.items() if k != "answers"}, indent=2))
    return 0


# -- models -------------------------------------------------------------------------------------


def _base():
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = ensure_default_model()
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(path)


def _load(folder: Path):
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


def _save(model, tokenizer, folder: Path) -> None:
    # fp32: small fine-tuning updates would round away in bf16.
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def _train_pairs() -> list[tuple[str, str]]:
    return [(item["prompt"], item["response"]) for item in load_split("train")]


def stage_anti(args, work: Path, before: dict) -> dict:
    import torch

    from adapters.copilot_training import render_prompt
    from adapters.proxy_training import cut_layers, distillation_loss, fit, greedy, pad_batch

    teacher, tokenizer = _base()
    prompts = [
        json.loads(line)["prompt"]
        for path in sorted(DISTIL_SUITES.glob("*.jsonl"))
        for line in path.read_text().splitlines()
        if line.strip()
    ] + [prompt for prompt, _ in _train_pairs()]
    cached = work / "teacher_answers.json"  # the slow half of the stage, kept on its own
    if cached.exists():
        answers = json.loads(cached.read_text())
    else:
        answers = greedy(teacher, tokenizer, prompts, 48, desc="teacher answers")
        cached.write_text(json.dumps(answers))
    sequences = [render_prompt(tokenizer, p) + a for p, a in zip(prompts, answers, strict=True)]
    student = cut_layers(teacher, args.anti_layers)
    pad = tokenizer.pad_token_id

    def loss(batch):
        inputs = pad_batch(batch, pad)
        with torch.no_grad():
            target = teacher(**inputs).logits
        return distillation_loss(student(**inputs).logits, target, inputs["attention_mask"])

    losses = fit(
        student,
        sequences,
        loss,
        epochs=args.distil_epochs,
        batch_size=args.batch_size,
        lr=args.distil_lr,
        desc="distil anti-expert",
    )
    _save(student, tokenizer, work / "anti")
    return {
        "layers": args.anti_layers,
        "parameters": sum(p.numel() for p in student.parameters()),
        "sequences": len(sequences),
        "tokens": sum(len(s) for s in sequences),
        "steps": len(losses),
        "kl_first": losses[0],
        "kl_last_epoch_mean": _last_epoch_mean(losses, args.distil_epochs),
    }


def _sft(model, tokenizer, args, epochs: int, lr: float, desc: str) -> list[float]:
    from adapters.proxy_training import fit, pad_batch, sft_example

    examples = [sft_example(tokenizer, p, r) for p, r in _train_pairs()]

    def loss(batch):
        inputs = pad_batch([i for i, _ in batch], tokenizer.pad_token_id, [lab for _, lab in batch])
        return model(**inputs).loss

    return fit(model, examples, loss, epochs=epochs, batch_size=args.batch_size, lr=lr, desc=desc)


def stage_expert(args, work: Path, before: dict) -> dict:
    from transformers import AutoTokenizer

    model, tokenizer = _load(work / "anti"), AutoTokenizer.from_pretrained(work / "anti")
    losses = _sft(model, tokenizer, args, args.expert_epochs, args.expert_lr, "tune expert")
    _save(model, tokenizer, work / "expert")
    return {"steps": len(losses), "loss_first": losses[0], "loss_last": losses[-1]}


def stage_direct(args, work: Path, before: dict) -> dict:
    model, tokenizer = _base()
    losses = _sft(model, tokenizer, args, args.direct_epochs, args.direct_lr, "tune SmolLM2")
    _save(model, tokenizer, work / "direct")
    return {
        "fine_tune": "full (all 30 layers and the tied embeddings)",
        "steps": len(losses),
        "loss_first": losses[0],
        "loss_last": losses[-1],
    }


def _last_epoch_mean(losses: list[float], epochs: int) -> float:
    tail = losses[-max(1, len(losses) // epochs) :]
    return sum(tail) / len(tail)


# -- evaluation ---------------------------------------------------------------------------------


def _general_questions():
    retain = [f for f in load_facts(FACTS) if f.group == "retain"]
    return [q for f in retain for q in (f.question, *f.probes)], [
        f for f in retain for _ in range(1 + len(f.probes))
    ]


def _score(task_answers: list[str], general_answers: list[str]) -> dict:
    held = load_split("heldout")
    _, owners = _general_questions()
    task = [first_word(a) == i["response"].lower() for a, i in zip(task_answers, held, strict=True)]
    general = [f.said_in(a) for f, a in zip(owners, general_answers, strict=True)]
    return {
        "heldout_accuracy": 100.0 * sum(task) / len(task),
        "general_accuracy": 100.0 * sum(general) / len(general),
        "answers": {"heldout": task_answers[:8], "general": general_answers[:8]},
    }


def stage_inprocess(args, work: Path, before: dict) -> dict:
    base, tokenizer = _base()
    held = [i["prompt"] for i in load_split("heldout")]
    general, _ = _general_questions()
    systems = {"base": base}
    for name in ("anti", "expert", "direct"):
        systems[name] = _load(work / name)
    result = {"decoding": "transformers greedy, fp32, in process"}
    for name, model in systems.items():
        result[name] = _score(
            _decode(model, tokenizer, held, TASK_TOKENS, f"{name}, held-out"),
            _decode(model, tokenizer, general, GENERAL_TOKENS, f"{name}, general"),
        )
    return result


def _decode(model, tokenizer, prompts, tokens: int, desc: str) -> list[str]:
    from adapters.proxy_training import greedy

    ids = greedy(model, tokenizer, prompts, tokens, desc=desc)
    return [tokenizer.decode(i, skip_special_tokens=True) for i in ids]


def stage_server(args, work: Path, before: dict) -> dict:
    extra = "".join(
        f"\n[aux_models.{name}]\npath = {json.dumps(str(work / name))}\n"
        for name in ("expert", "anti")
    )
    held = [i["prompt"] for i in load_split("heldout")]
    general, _ = _general_questions()
    alphas = [float(a) for a in args.alphas.split(",")]
    result: dict = {
        **before,
        "decoding": "corrigo serve (vLLM, eager, fp32), OpenAI SDK, greedy, c=8",
    }
    systems = {"base": None} | {
        f"proxy alpha={alpha:g}": {
            "proxy_tuning": {"expert": "expert", "anti_expert": "anti", "alpha": alpha}
        }
        for alpha in alphas
    }
    todo = {name: correction for name, correction in systems.items() if name not in result}
    if not todo:
        return result
    with local_server(extra_config=extra) as url:
        for name, correction in todo.items():
            result[name] = _score(
                ask_all(url, held, correction, TASK_TOKENS, f"{name}, held-out"),
                ask_all(url, general, correction, GENERAL_TOKENS, f"{name}, general"),
            )
    return result


def stage_docs(args, work: Path, before: dict) -> dict:
    stages = {
        name: json.loads((work / "stages" / f"{name}.json").read_text()) for name in STAGES[:-1]
    }
    server, local = stages["server"], stages["inprocess"]
    base = server["base"]["heldout_accuracy"]
    direct = local["direct"]["heldout_accuracy"]
    systems = {
        "base (server)": server["base"],
        "base (transformers)": local["base"],
        "anti-expert alone": local["anti"],
        "expert alone": local["expert"],
        **{
            f"proxy-tuned, {k.split()[1]}": server[k]
            for k in sorted(
                (k for k in server if k.startswith("proxy")), key=lambda k: float(k.split("=")[1])
            )
        },
        "directly tuned": local["direct"],
    }
    gap = {
        k: 100.0 * (v["heldout_accuracy"] - base) / (direct - base) if direct != base else None
        for k, v in systems.items()
        if k.startswith("proxy")
    }
    results = {
        "task": "evals/suites/copilot (sentiment, one word)",
        "train_items": len(load_split("train")),
        "heldout_items": len(load_split("heldout")),
        "general_questions": len(_general_questions()[0]),
        "heldout_accuracy": {k: v["heldout_accuracy"] for k, v in systems.items()},
        "general_accuracy": {k: v["general_accuracy"] for k, v in systems.items()},
        "gap_closed_pct": gap,
        "stages": {
            name: {k: v for k, v in s.items() if not isinstance(v, dict) or k == "answers"}
            for name, s in stages.items()
        },
        "examples": {k: v["answers"] for k, v in systems.items()},
    }
    write_docs(args.docs, results, args)
    return {"gap_closed_pct": gap, "heldout_accuracy": results["heldout_accuracy"]}


STAGE_FUNCTIONS = {
    "anti": stage_anti,
    "expert": stage_expert,
    "direct": stage_direct,
    "inprocess": stage_inprocess,
    "server": stage_server,
    "docs": stage_docs,
}


def write_docs(folder: Path, results: dict, args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "proxy_tuning.json").write_text(json.dumps(results, indent=2) + "\n")
    held, general = results["heldout_accuracy"], results["general_accuracy"]
    names = list(held)
    colours = [
        "grey"
        if n.startswith("base")
        else "tab:orange"
        if n.startswith(("anti", "expert"))
        else "tab:blue"
        if n.startswith("proxy")
        else "tab:green"
        for n in names
    ]
    fig, ax = plt.subplots(figsize=(10, 4))
    xs = range(len(names))
    ax.bar(
        [x - 0.2 for x in xs], [held[n] for n in names], 0.4, color=colours, label="held-out task"
    )
    ax.bar(
        [x + 0.2 for x in xs],
        [general[n] for n in names],
        0.4,
        color=colours,
        alpha=0.4,
        hatch="//",
        label="general (retain questions)",
    )
    for x, n in zip(xs, names, strict=True):
        ax.text(x - 0.2, held[n] + 1, f"{held[n]:.0f}", ha="center", fontsize=8)
        ax.text(x + 0.2, general[n] + 1, f"{general[n]:.0f}", ha="center", fontsize=8)
    ax.set_xticks(
        list(xs),
        [n.replace(", ", "\n").replace(" (", "\n(").replace(" alone", "\nalone") for n in names],
        fontsize=8,
    )
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 110)
    ax.set_title(
        "Proxy-tuning SmolLM2-135M: sentiment task (solid) and general questions (hatched)"
    )
    ax.title.set_fontsize(10)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(folder / "proxy_tuning.png", dpi=110)
    s = results["stages"]
    gap = results["gap_closed_pct"]
    rows = "\n".join(
        f"| {n} | {held[n]:.1f} | {general[n]:.1f} | "
        + ("" if gap.get(n) is None else f"{gap[n]:.0f}%")
        + " |"
        for n in names
    )
    timing = "\n".join(
        f"| {name} | {st['wall_seconds']} | {st['cpu_seconds']} |" for name, st in s.items()
    )
    (folder / "proxy_tuning.md").write_text(
        f"""# Proxy-tuning: held-out accuracy and what it costs elsewhere

Command (2 CPU cores, fp32; each stage is cached under `--work-dir`, so stages can run one at a
time: `--stages anti`, then `expert`, ...):

    corrigo eval proxy-tuning --anti-layers {args.anti_layers} --alphas {args.alphas}

Task: `evals/suites/copilot/` ({results["train_items"]} train / {results["heldout_items"]}
held-out items): label a short review Positive or Negative in one word; right when the
answer's first word is the label ({TASK_TOKENS} tokens, greedy). General ability: the
{results["general_questions"]} retain questions and probes of `evals/data/facts.jsonl`
(the unlearning eval's), right when the answer names the target ({GENERAL_TOKENS} tokens).

Models (all share SmolLM2's tokenizer; folders in the work dir, not in the repository):

- base: the embedded SmolLM2-135M-Instruct (30 layers, 135M parameters);
- anti-expert: SmolLM2's first {s["anti"]["layers"]} layers + final norm + tied
  embeddings/head ({s["anti"]["parameters"] / 1e6:.1f}M parameters, most of them the
  embeddings), distilled on SmolLM2's next-token distributions over {s["anti"]["sequences"]}
  chat-formatted sequences ({s["anti"]["tokens"]} tokens: the refinement suites' prompts and the
  task's train prompts, each followed by SmolLM2's own greedy answer; no labels):
  {s["anti"]["steps"]} steps, KL {s["anti"]["kl_first"]:.2f} -> {s["anti"]["kl_last_epoch_mean"]:.2f}
  (mean of the last epoch);
- expert: the anti-expert fine-tuned on the train split, loss on response tokens only
  ({s["expert"]["steps"]} steps, loss {s["expert"]["loss_first"]:.3f} -> {s["expert"]["loss_last"]:.4f});
- directly tuned: SmolLM2 fine-tuned the same way, {s["direct"]["fine_tune"]}
  ({s["direct"]["steps"]} steps, loss {s["direct"]["loss_first"]:.3f} -> {s["direct"]["loss_last"]:.4f}).

Training: AdamW, batch {args.batch_size}, learning rate decaying linearly to 0, fp32;
distillation {args.distil_epochs} epochs at {args.distil_lr:g}, expert {args.expert_epochs}
epochs at {args.expert_lr:g}, direct {args.direct_epochs} epochs at {args.direct_lr:g}.

Base and proxy-tuned base are measured through `corrigo serve` (vLLM, eager, fp32) with the
OpenAI SDK, greedy, concurrency 8, the pair declared as `[aux_models.expert]` /
`[aux_models.anti]` and each request carrying
`{{"proxy_tuning": {{"expert": "expert", "anti_expert": "anti", "alpha": A}}}}`. The
anti-expert, the expert and the directly tuned model are decoded greedily with transformers in
process (fp32); the base is decoded that way too, as a cross-check of the two decoders.
Gap closed = (proxy - base) / (directly tuned - base), on the held-out task, with the server's
base.

| system | held-out task (%) | general questions (%) | gap closed |
|---|---:|---:|---:|
{rows}

![accuracy per system](proxy_tuning.png)

Time per stage (seconds; CPU is this process's, so the server stage's engine is not in it):

| stage | wall | CPU |
|---|---:|---:|
{timing}
"""
    )
