"""``corrigo eval proxy-tuning``: the proxy-tuning experiment (Liu et al. 2024) at small scale,
on the method's claim: the small expert's tuning, the large base's knowledge.

Base: the embedded SmolLM2-135M-Instruct. Task (:func:`task_items`): answer a factual question
in a fixed form, ``Answer: <answer>.``, learnt from examples only (the prompt is the bare
question). Facts: every fact of evals/data/facts.jsonl (its canonical question and three
paraphrases), split by fact, with a fixed seed, into train, validation and test: the expert
learns the form on the train facts and never sees a validation or test fact, so on those it
can only get the form right; the base knows many of the facts but never answers in that form.
Right: the answer's first line is ``Answer: X`` with X the fact's target or an alias (and at
most two more words). Stages, each cached in ``--work-dir`` (rerun to resume; run one with
``--stages NAME``):

1. ``anti``: the anti-expert, SmolLM2's first ``--anti-layers`` decoder layers + final norm +
   tied embeddings/head, distilled on SmolLM2's own next-token distributions (KL) over generic
   chat-formatted prompts that ship with the project (the refinement suites and the unlearning
   eval's unrelated prompts; no fact of the task) followed by SmolLM2's greedy answers;
2. ``expert``: the anti-expert fine-tuned on the train split (loss on response tokens only);
3. ``direct``: SmolLM2 itself fully fine-tuned on the same split (the upper bound);
4. ``inprocess``: transformers greedy decoding of the validation and test items (and the
   general questions) by the expert, the anti-expert, the directly tuned model and, as a
   cross-check, the base;
5. ``server``: ``corrigo serve`` with ``[aux_models]`` expert and anti; base alone and
   proxy-tuned base (``correction.proxy_tuning``, each alpha of the sweep) through the OpenAI
   SDK, greedy, on the validation and test items and the general questions (the unlearning
   eval's near-topic questions, scored as there);
6. ``formats``: per-model prompts (evals/proxy_tuning_formats.py): the served base reads the
   bare prompt (``[frontend] chat_template``), the pair either the same rendering (corrigo
   before per-model prompts) or its own chat format (``[aux_models.NAME] chat_template =
   "chat"``); base alone and both conditions at each alpha, as in ``server``;
7. ``docs``: alpha chosen on the validation split (best accuracy, the smaller alpha on a tie),
   the test split reported at that alpha with 95% intervals (for ``formats``, per condition,
   and the difference paired by item); JSON, markdown and plot in ``--docs``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from adapters.default_model import ensure_default_model
from decoding.cache import cache_dir
from evals.results import append_run, load_average, machine, write_page

from . import proxy_tuning_formats as formats
from .server import local_server
from .unlearning import (
    Fact,
    ask_all,
    interval,
    load_facts,
    load_near_topic,
    load_unrelated,
)

STAGES = ("anti", "expert", "direct", "inprocess", "server", "formats", "docs")
RESUMING = ("server", "formats", "docs")
#: Generic prompts the anti-expert is distilled on (with the unrelated prompts).
DISTIL_SUITES = Path(__file__).parent / "suites" / "refinement"
TASK_TOKENS = 10
GENERAL_TOKENS = 32
#: The task's splits: shares of the facts, and the seed that deals them.
SPLITS = {"train": 0.5, "validation": 0.2, "test": 0.3}
SPLIT_SEED = 0
EVAL_SPLITS = ("validation", "test")


def answer_form(fact: Fact) -> str:
    """The task's answer to any question about ``fact``."""
    return f"Answer: {fact.target}."


def task_items(split: str) -> list[tuple[str, Fact]]:
    """``(prompt, fact)`` for every question of the facts dealt to ``split``: each fact's
    canonical question and its three paraphrases, so all of a fact's wordings share a split."""
    import random

    facts = sorted(load_facts(), key=lambda f: f.question)
    random.Random(SPLIT_SEED).shuffle(facts)
    bounds, start = {}, 0
    for name, share in SPLITS.items():
        end = len(facts) if name == "test" else start + round(share * len(facts))
        bounds[name] = facts[start:end]
        start = end
    return [(q, f) for f in bounds[split] for q in (f.question, *f.probes)]


def task_right(text: str, fact: Fact) -> bool:
    """The answer's first line is ``Answer: X`` with X the target or an alias, at most two
    words longer (a trailing "City" or article is no error)."""
    import re

    match = re.match(r"\s*Answer:\s*(.+)", text.strip().splitlines()[0] if text.strip() else "")
    if not match:
        return False
    said = match.group(1).strip().rstrip(".!")
    return fact.said_in(said) and len(said.split()) <= len(fact.target.split()) + 2


def task_form(text: str) -> bool:
    """The answer starts with ``Answer:`` (whatever follows): the form alone."""
    return text.strip().startswith("Answer:")


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
        wall, cpu, where = time.perf_counter(), time.process_time(), machine()
        result = STAGE_FUNCTIONS[name](args, work, before)
        result["machine"] = {**where, "load_average_after": load_average()}
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
    return [(prompt, answer_form(fact)) for prompt, fact in task_items("train")]


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
    ] + load_unrelated()
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
    near = load_near_topic()
    return [n.question for n in near], near


def _prompts(split: str) -> list[str]:
    return [prompt for prompt, _ in task_items(split)]


def _score(answers: dict[str, list[str]], general_answers: list[str]) -> dict:
    """Per split: accuracy (form and answer), form alone, and the answer said anywhere (what
    the model knows, whatever the form); general accuracy; a few answers."""
    _, owners = _general_questions()
    result = {}
    for split, texts in answers.items():
        facts = [fact for _, fact in task_items(split)]
        result[split] = {
            "accuracy": interval([task_right(t, f) for t, f in zip(texts, facts, strict=True)]),
            "form": interval([task_form(t) for t in texts]),
            "knows": interval([f.said_in(t) for t, f in zip(texts, facts, strict=True)]),
        }
    result["general"] = interval(
        [n.said_in(a) for n, a in zip(owners, general_answers, strict=True)]
    )
    result["answers"] = {
        **{split: texts[:8] for split, texts in answers.items()},
        "general": general_answers[:8],
    }
    return result


def stage_inprocess(args, work: Path, before: dict) -> dict:
    base, tokenizer = _base()
    general, _ = _general_questions()
    systems = {"base": base}
    for name in ("anti", "expert", "direct"):
        systems[name] = _load(work / name)
    result = {"decoding": "transformers greedy, fp32, in process"}
    for name, model in systems.items():
        result[name] = _score(
            {
                split: _decode(model, tokenizer, _prompts(split), TASK_TOKENS, f"{name}, {split}")
                for split in EVAL_SPLITS
            },
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
    general, _ = _general_questions()
    alphas = [float(a) for a in args.alphas.split(",")]
    result: dict = {
        **before,
        "decoding": "corrigo serve (vLLM, eager, the engine's dtype), OpenAI SDK, greedy, c=8",
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
                {
                    split: ask_all(
                        url, _prompts(split), correction, TASK_TOKENS, f"{name}, {split}"
                    )
                    for split in EVAL_SPLITS
                },
                ask_all(url, general, correction, GENERAL_TOKENS, f"{name}, general"),
            )
    return result


def stage_formats(args, work: Path, before: dict) -> dict:
    template = work / "bare_prompt.jinja"
    template.write_text(formats.BARE_TEMPLATE)
    general, _ = _general_questions()
    alphas = [float(a) for a in args.alphas.split(",")]
    result: dict = {
        **before,
        "decoding": "corrigo serve (vLLM, eager, the engine's dtype), OpenAI SDK, greedy, c=8",
    }
    systems = {formats.BARE_BASE: None} | {
        formats.system_name(c, a): formats.correction(c, a)
        for c in formats.CONDITIONS
        for a in alphas
    }
    todo = {name: correction for name, correction in systems.items() if name not in result}
    if not todo:
        return result
    config = formats.server_config(template, work / "expert", work / "anti")
    with local_server(extra_config=config) as url:
        result["checks"] = _check_formats(url, _prompts("test")[0], work / "expert")
        for name, correction in todo.items():
            texts = {
                split: ask_all(url, _prompts(split), correction, TASK_TOKENS, f"{name}, {split}")
                for split in EVAL_SPLITS
            }
            general_texts = ask_all(url, general, correction, GENERAL_TOKENS, f"{name}, general")
            result[name] = {**_score(texts, general_texts), "texts": texts}
            # Kept after each system: a stopped run resumes from the next one.
            (work / "stages" / "formats.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def _check_formats(url: str, prompt: str, tokenizer_folder: Path) -> dict:
    """Fail closed unless the server runs the row as declared: the served model's prompt is
    the bare text, and each condition's report names the pair's formats as expected."""
    import httpx
    from openai import OpenAI
    from transformers import AutoTokenizer

    client = OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=600)
    model = client.models.list().data[0].id
    messages = [{"role": "user", "content": prompt}]
    served = httpx.post(
        f"{url}/tokenize", json={"model": model, "messages": messages}, timeout=60
    ).json()["tokens"]
    bare = AutoTokenizer.from_pretrained(tokenizer_folder)(f"{prompt}\n\n").input_ids
    if served != bare:
        raise RuntimeError(f"the served model's prompt is {served}, not the bare text {bare}")
    reports = {}
    for condition in formats.CONDITIONS:
        r = client.chat.completions.create(
            model=model,
            messages=messages,
            max_tokens=2,
            temperature=0,
            extra_body={"correction": formats.correction(condition, 0.5)},
        )
        reports[condition] = (r.model_extra or {}).get("correction")
        formats.check_report(condition, reports[condition])
    return {"served_prompt": "bare text (ids checked with /tokenize)", "reports": reports}


def stage_docs(args, work: Path, before: dict) -> dict:
    stages = {
        name: json.loads((work / "stages" / f"{name}.json").read_text()) for name in STAGES[:-1]
    }
    server, local = stages["server"], stages["inprocess"]
    proxies = sorted(
        (k for k in server if k.startswith("proxy")), key=lambda k: float(k.split("=")[1])
    )
    # The alpha is chosen on the validation split only; ties go to the smaller alpha.
    alpha = formats.choose_alpha(
        {float(k.split("=")[1]): server[k]["validation"]["accuracy"]["rate"] for k in proxies}
    )
    chosen = f"proxy alpha={alpha:g}"
    systems = {
        "base (server)": server["base"],
        "base (transformers)": local["base"],
        "anti-expert alone": local["anti"],
        "expert alone": local["expert"],
        f"proxy-tuned, alpha={alpha:g}": server[chosen],
        "directly tuned": local["direct"],
    }
    base = server["base"]["test"]["accuracy"]["rate"]
    direct = local["direct"]["test"]["accuracy"]["rate"]
    proxy = server[chosen]["test"]["accuracy"]["rate"]
    results = {
        "task": "facts in the form 'Answer: X.' (evals/data/facts.jsonl, split by fact)",
        "split_seed": SPLIT_SEED,
        "items": {split: len(task_items(split)) for split in SPLITS},
        "facts": {split: len(task_items(split)) // 4 for split in SPLITS},
        "general_questions": len(_general_questions()[0]),
        "chosen_alpha": alpha,
        "gap_closed_pct_test": 100.0 * (proxy - base) / (direct - base) if direct != base else None,
        "systems": {
            name: {k: v for k, v in r.items() if k != "answers"} for name, r in systems.items()
        },
        "sweep": {
            float(k.split("=")[1]): {
                "validation": server[k]["validation"]["accuracy"],
                "test": server[k]["test"]["accuracy"],
                "general": server[k]["general"],
            }
            for k in proxies
        },
        "per_model_prompts": _formats_summary(stages["formats"]),
        "stages": {
            name: {k: v for k, v in st.items() if k == "machine" or not isinstance(v, dict)}
            for name, st in stages.items()
        },
        "examples": {k: v["answers"] for k, v in systems.items()},
    }
    write_docs(args.docs, results, args)
    return {
        "chosen_alpha": alpha,
        "gap_closed_pct_test": results["gap_closed_pct_test"],
        "test_accuracy": {k: v["test"]["accuracy"]["rate"] for k, v in results["systems"].items()},
    }


def _formats_summary(record: dict) -> dict:
    """The per-model prompts row (evals/proxy_tuning_formats.py) from the ``formats`` stage."""
    items = task_items("test")
    systems = {k: v for k, v in record.items() if isinstance(v, dict) and "texts" in v}
    right = {
        name: [task_right(t, f) for t, (_, f) in zip(r["texts"]["test"], items, strict=True)]
        for name, r in systems.items()
    }
    return {
        **formats.summarise(systems, right, [f.question for _, f in items]),
        "checks": record["checks"],
    }


def _pct(cell: dict) -> str:
    return f"{100 * cell['rate']:.1f} [{100 * cell['low']:.0f}, {100 * cell['high']:.0f}]"


STAGE_FUNCTIONS = {
    "anti": stage_anti,
    "expert": stage_expert,
    "direct": stage_direct,
    "inprocess": stage_inprocess,
    "server": stage_server,
    "formats": stage_formats,
    "docs": stage_docs,
}


def write_docs(folder: Path, results: dict, args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    append_run(folder / "proxy_tuning.json", results, machine())
    systems = results["systems"]
    names = list(systems)
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
    fig, (ax, sweep_ax, formats_ax) = plt.subplots(1, 3, figsize=(17, 4), width_ratios=[3, 2, 2])
    for offset, key, alpha_, label in (
        (-0.2, "test", 1.0, "test task"),
        (0.2, "general", 0.4, "general"),
    ):
        cells = [systems[n][key]["accuracy"] if key == "test" else systems[n][key] for n in names]
        xs = [x + offset for x in range(len(names))]
        ax.bar(
            xs,
            [100 * c["rate"] for c in cells],
            0.4,
            color=colours,
            alpha=alpha_,
            yerr=[
                [max(0.0, 100 * (c["rate"] - c["low"])) for c in cells],
                [max(0.0, 100 * (c["high"] - c["rate"])) for c in cells],
            ],
            capsize=2,
            label=label,
            hatch=None if key == "test" else "//",
        )
    ax.set_xticks(
        list(range(len(names))),
        [n.replace(", ", "\n").replace(" (", "\n(").replace(" alone", "\nalone") for n in names],
        fontsize=8,
    )
    ax.set_ylabel("accuracy (%, 95% interval)")
    ax.set_ylim(0, 105)
    ax.set_title(
        "Test facts in the learnt form (solid) and general questions (hatched)", fontsize=9
    )
    ax.legend(loc="upper left", fontsize=8)
    alphas = sorted(results["sweep"], key=float)
    for key, style in (("validation", "o-"), ("test", "s--"), ("general", "^:")):
        sweep_ax.plot(
            [float(a) for a in alphas],
            [100 * results["sweep"][a][key]["rate"] for a in alphas],
            style,
            label=key,
        )
    sweep_ax.axvline(results["chosen_alpha"], color="grey", lw=0.8)
    sweep_ax.set_xscale("log")
    sweep_ax.set_xlabel("alpha (chosen on validation: grey line)")
    sweep_ax.set_ylabel("accuracy (%)")
    sweep_ax.set_title("Proxy-tuned base across alpha", fontsize=9)
    sweep_ax.legend(fontsize=8)
    _plot_formats(formats_ax, results["per_model_prompts"])
    fig.tight_layout()
    fig.savefig(folder / "proxy_tuning.png", dpi=110)
    s = results["stages"]
    rows = "\n".join(
        f"| {n} | {_pct(r['test']['accuracy'])} | {_pct(r['test']['form'])} | "
        f"{_pct(r['test']['knows'])} | {_pct(r['general'])} |"
        for n, r in systems.items()
    )
    sweep = "\n".join(
        f"| {float(a):g} | {_pct(r['validation'])} | {_pct(r['test'])} | {_pct(r['general'])} |"
        for a, r in sorted(results["sweep"].items(), key=lambda kv: float(kv[0]))
    )
    gap = results["gap_closed_pct_test"]
    timing = "\n".join(
        f"| {name} | {st['wall_seconds']} | {st['cpu_seconds']} |" for name, st in s.items()
    )
    items, facts = results["items"], results["facts"]
    per_model = _formats_section(results["per_model_prompts"], systems)
    write_page(
        folder / "proxy_tuning.md",
        f"""# Proxy-tuning: the expert's form, the base's knowledge

Command (2 CPU cores; each stage is cached under `--work-dir`, so stages can run one at a
time: `--stages anti`, then `expert`, ...):

    corrigo eval proxy-tuning --anti-layers {args.anti_layers} --alphas {args.alphas}

## Task

Proxy-tuning's claim is that a small tuned expert can pass its tuning to a large base that
keeps its own knowledge. The task tests exactly that: answer a factual question in a fixed
form, `Answer: <answer>.`, learnt from examples (the prompt is the bare question, so nothing
tells the base the form). The facts are the {sum(facts.values())} of `evals/data/facts.jsonl`
(capitals, writers, painters, inventors...), each with its canonical question and three
paraphrases, dealt by fact with seed {results["split_seed"]}: {facts["train"]} train facts
({items["train"]} questions), {facts["validation"]} validation ({items["validation"]}) and
{facts["test"]} test ({items["test"]}). The expert is tuned on the train facts and never sees
a validation or test fact, so there it can learn the form but not the answers; the base knows
many answers but never uses the form. Right: the answer's first line is `Answer: X` with X the
fact's target or an alias (at most two words more); "form" counts answers that start with
`Answer:`; "knows" counts answers that name the target anywhere, whatever the form.
General ability: the {results["general_questions"]} near-topic questions of the unlearning
eval (`evals/data/near_topic.jsonl`), right when the answer names the target ({GENERAL_TOKENS}
tokens). Task answers: {TASK_TOKENS} tokens, greedy.

Models (all share SmolLM2's tokenizer; folders in the work dir, not in the repository):

- base: the embedded SmolLM2-135M-Instruct (30 layers, 135M parameters);
- anti-expert: SmolLM2's first {s["anti"]["layers"]} layers + final norm + tied
  embeddings/head ({s["anti"]["parameters"] / 1e6:.1f}M parameters, most of them the
  embeddings), distilled on SmolLM2's next-token distributions over {s["anti"]["sequences"]}
  generic chat-formatted sequences ({s["anti"]["tokens"]} tokens: the refinement suites' prompts
  and the unlearning eval's unrelated prompts, each followed by SmolLM2's own greedy answer; no
  question of the task): {s["anti"]["steps"]} steps, KL {s["anti"]["kl_first"]:.2f} ->
  {s["anti"]["kl_last_epoch_mean"]:.2f} (mean of the last epoch);
- expert: the anti-expert fine-tuned on the train split, loss on response tokens only
  ({s["expert"]["steps"]} steps, loss {s["expert"]["loss_first"]:.3f} -> {s["expert"]["loss_last"]:.4f});
- directly tuned: SmolLM2 fine-tuned the same way, {s["direct"]["fine_tune"]}
  ({s["direct"]["steps"]} steps, loss {s["direct"]["loss_first"]:.3f} -> {s["direct"]["loss_last"]:.4f}).

Training: AdamW, batch {args.batch_size}, learning rate decaying linearly to 0, fp32;
distillation {args.distil_epochs} epochs at {args.distil_lr:g}, expert {args.expert_epochs}
epochs at {args.expert_lr:g}, direct {args.direct_epochs} epochs at {args.direct_lr:g}.

Base and proxy-tuned base are measured through `corrigo serve` (vLLM, eager) with the OpenAI
SDK, greedy, concurrency 8, the pair declared as `[aux_models.expert]` / `[aux_models.anti]`
and each request carrying `{{"proxy_tuning": {{"expert": "expert", "anti_expert": "anti",
"alpha": A}}}}`. The anti-expert, the expert and the directly tuned model are decoded greedily
with transformers in process (fp32); the base is decoded that way too, as a cross-check of the
two decoders. Alpha is chosen on the validation split (best accuracy, the smaller alpha on a
tie): **{results["chosen_alpha"]:g}**; the test split is reported at that alpha.

## Results (test facts; 95% Wilson intervals over questions)

| system | test: right (%) | test: form (%) | test: knows (%) | general (%) |
|---|---:|---:|---:|---:|
{rows}

Gap closed on the test facts at the chosen alpha, (proxy - base) / (directly tuned - base):
{"n/a" if gap is None else f"{gap:.0f}%"}.

![accuracy per system, and the alpha sweep](proxy_tuning.png)

The sweep (every alpha; the choice used the validation column only):

| alpha | validation | test | general |
|---:|---:|---:|---:|
{sweep}

{per_model}

Time per stage (seconds; CPU is this process's, so the server stage's engine is not in it):

| stage | wall | CPU |
|---|---:|---:|
{timing}
""",
    )


def _plot_formats(ax, row: dict) -> None:
    for condition, colour in zip(formats.CONDITIONS, ("tab:red", "tab:blue"), strict=True):
        sweep = row[condition]["sweep"]
        alphas = sorted(sweep, key=float)
        for key, style, label in (("test", "o-", "right"), ("test_form", "s--", "form")):
            ax.plot(
                [float(a) for a in alphas],
                [100 * sweep[a][key]["rate"] for a in alphas],
                style,
                color=colour,
                label=f"{condition}: {label}",
            )
    ax.axhline(100 * row["base"]["test"]["accuracy"]["rate"], color="grey", lw=0.8)
    ax.set_xscale("log")
    ax.set_ylim(0, 105)
    ax.set_xlabel("alpha (grey line: base alone, right)")
    ax.set_ylabel("test questions (%)")
    ax.set_title("Base reads the bare prompt; the pair its chat format or the same", fontsize=9)
    ax.legend(fontsize=7)


def _formats_section(row: dict, systems: dict) -> str:
    """The page's section on the per-model prompts row (evals/proxy_tuning_formats.py)."""
    diff = row["per model - one rendering (test)"]
    # For reference, the main table's base and proxy-tuned base: every model reads the chat prompt.
    proxy = next(n for n in systems if n.startswith("proxy"))
    reference = {
        "base alone, chat prompt (above)": ("", systems["base (server)"]),
        "one rendering, chat prompt for all (above)": (proxy.rsplit("=", 1)[1], systems[proxy]),
    }
    lines = [
        f"| base alone, bare prompt | - | {_pct(row['base']['test']['accuracy'])} | "
        f"{_pct(row['base']['test']['form'])} | {_pct(row['base']['test']['knows'])} | "
        f"{_pct(row['base']['general'])} |"
    ]
    for condition in formats.CONDITIONS:
        r = row[condition]
        lines.append(
            f"| {condition} | {r['chosen_alpha']:g} | {_pct(r['test']['accuracy'])} | "
            f"{_pct(r['test']['form'])} | {_pct(r['test']['knows'])} | {_pct(r['general'])} |"
        )
    for name, (alpha, r) in reference.items():
        lines.append(
            f"| {name} | {alpha or '-'} | {_pct(r['test']['accuracy'])} | {_pct(r['test']['form'])} | "
            f"{_pct(r['test']['knows'])} | {_pct(r['general'])} |"
        )
    one, own = row["one rendering"]["sweep"], row["per model"]["sweep"]
    sweep = "\n".join(
        f"| {float(a):g} | "
        + " | ".join(
            _pct(side[a][key])
            for side in (one, own)
            for key in ("validation", "test", "test_form", "general")
        )
        + " |"
        for a in sorted(one, key=float)
    )
    reports = row["checks"]["reports"]
    table = "\n".join(lines)
    return f"""## Per-model prompts: an untuned base's prompt, the chat pair's prompt

The paper's main setting steers an untuned base, which reads plain text, with a chat-tuned
expert pair, each model reading the prompt in its own format. Here the served base reads each
question as bare text: `[frontend] chat_template` is `{json.dumps(row["served_template"])}` (each
message's text and a blank line, what `chat_template = "base"` gives an auxiliary model), the
text an untuned base would be given. Two conditions, on one server and the same items
(evals/proxy_tuning_formats.py):

- **one rendering** (corrigo before per-model prompts): the pair as `[aux_models.expert]` /
  `[aux_models.anti]` with no `chat_template`, so it steps on the base's bare prompt;
- **per model**: the same two folders as `[aux_models.expert_chat]` / `[aux_models.anti_chat]`
  with `chat_template = "chat"`, so the pair reads SmolLM2's chat format, which the anti-expert
  was distilled and the expert tuned on.

Checked when the server starts (the run fails otherwise): `/tokenize` gives the bare text's ids
for the served prompt, and the responses' reports are `{reports["one rendering"]}` (one
rendering) and `{reports["per model"]}` (per model). Alpha is chosen on the validation split
for each condition; test split, 95% Wilson intervals over questions:

| system | alpha | test: right (%) | test: form (%) | test: knows (%) | general (%) |
|---|---:|---:|---:|---:|---:|
{table}

Per model minus one rendering, test split, paired by question at each condition's alpha:
**{100 * diff["difference"]:+.1f} points** [{100 * diff["low"]:+.1f}, {100 * diff["high"]:+.1f}]
(95% interval over the {diff["facts"]} facts, a fact's four wordings being correlated);
{diff["new_only"]} of {diff["items"]} questions right only per model, {diff["old_only"]} only
with one rendering.

The sweep (the choice used the validation columns only):

| alpha | one rendering: validation | test | test form | general | per model: validation | test | test form | general |
|---:|---:|---:|---:|---:|---:|---:|---:|---:|
{sweep}"""
