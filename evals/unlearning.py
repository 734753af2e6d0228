"""``corrigo eval unlearning``: leak rate and retain accuracy of guarded unlearning.

From the facts shipped in evals/data/facts.jsonl (a canonical question, the answer statement,
the short target answer, three paraphrased probes, and a group: forget candidate or retain):

1. serve the model plainly and ask every question and probe (greedy): the forget set is the
   forget candidates whose canonical question the model answers correctly;
2. serve it again with that forget set and ask, with ``correction.unlearning``, the forget facts'
   probes (never the forget set's own wording) and the retain facts' questions and probes;
3. leak rate: share of known forget facts for which some probe's answer contains the target
   (and share of probes); retain accuracy: share of retain questions and probes answered with
   the target; both with and without the plugin; plus the base model's perplexity on the retain
   answers (transformers, teacher-forced after the chat-formatted question).

Writes JSON and a PNG next to docs/evals/unlearning.md.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from adapters.default_model import ensure_default_model
from server.launcher import LiveServer, start_server
from server.toml_writer import write_config

FACTS = Path(__file__).parent / "data" / "facts.jsonl"
ENGINE = {"enforce_eager": True, "max_model_len": 2048}


@dataclass(frozen=True)
class Fact:
    group: str
    question: str
    answer: str
    target: str
    aliases: tuple[str, ...]
    probes: tuple[str, ...]

    def said_in(self, text: str) -> bool:
        return any(
            re.search(rf"(?<!\w){re.escape(t)}(?!\w)", text, re.IGNORECASE)
            for t in (self.target, *self.aliases)
        )


def load_facts(path: Path = FACTS) -> list[Fact]:
    facts = []
    for line in path.read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            facts.append(
                Fact(
                    r["group"],
                    r["question"],
                    r["answer"],
                    r["target"],
                    tuple(r["aliases"]),
                    tuple(r["probes"]),
                )
            )
    return facts


def serve(sections: dict, workdir: Path, name: str) -> LiveServer:
    """``corrigo serve`` with the config ``sections``; its config and log in ``workdir``."""
    config = write_config(workdir / f"{name}.toml", sections)
    return start_server(config, workdir / f"{name}.log")


def ask_all(base_url: str, questions: list[str], correction, max_tokens: int, desc: str):
    from openai import OpenAI

    client = OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0, timeout=600)
    model = client.models.list().data[0].id

    def one(question: str) -> str:
        extra = {"correction": correction} if correction else None
        r = client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": question}],
            max_tokens=max_tokens,
            temperature=0,
            extra_body=extra,
        )
        return r.choices[0].message.content or ""

    with ThreadPoolExecutor(8) as pool:
        return list(tqdm(pool.map(one, questions), total=len(questions), desc=desc))


def perplexity(facts: list[Fact]) -> float:
    """The base model's perplexity on the answers, after the chat-formatted question."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = ensure_default_model()
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    nll, count = 0.0, 0
    for fact in facts:
        prompt = tok.apply_chat_template(
            [{"role": "user", "content": fact.question}], tokenize=False, add_generation_prompt=True
        )
        p = tok(prompt, add_special_tokens=False)["input_ids"]
        a = tok(fact.answer, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([p + a])
        with torch.inference_mode():
            logits = model(ids).logits[0, len(p) - 1 : -1]
        nll += float(torch.nn.functional.cross_entropy(logits, ids[0, len(p) :], reduction="sum"))
        count += len(a)
    return math.exp(nll / count)


def rate(flags: list[bool]) -> float:
    return sum(flags) / len(flags) if flags else float("nan")


def evaluate(args: argparse.Namespace) -> dict:
    facts = load_facts(Path(args.facts))
    forget_candidates = [f for f in facts if f.group == "forget"]
    retain = [f for f in facts if f.group == "retain"]
    retain_qs = [q for f in retain for q in (f.question, *f.probes)]
    retain_owner = [f for f in retain for _ in range(1 + len(f.probes))]
    workdir = Path(tempfile.mkdtemp(prefix="corrigo-eval-unlearning-"))
    base = {"engine": ENGINE}
    if args.model:
        base["model"] = {"path": args.model}

    server = serve(base, workdir, "plain")
    try:
        canonical = ask_all(
            server.base_url,
            [f.question for f in forget_candidates],
            None,
            args.max_tokens,
            "known?",
        )
        known = [f for f, a in zip(forget_candidates, canonical, strict=True) if f.said_in(a)]
        probes = [p for f in known for p in f.probes]
        probe_owner = [f for f in known for _ in f.probes]
        plain_probes = ask_all(server.base_url, probes, None, args.max_tokens, "probes, plain")
        plain_retain = ask_all(server.base_url, retain_qs, None, args.max_tokens, "retain, plain")
    finally:
        server.stop()

    forget_file = workdir / "forget.jsonl"
    forget_file.write_text(
        "".join(json.dumps({"question": f.question, "answer": f.answer}) + "\n" for f in known)
    )
    forget_file.chmod(0o600)  # corrigo refuses forget sets other users can read
    correction = {"unlearning": {"forget_set": "eval", "threshold": args.threshold}}
    forget_set = {"path": str(forget_file), "threshold": args.threshold}
    server = serve({**base, "forget_sets": {"eval": forget_set}}, workdir, "gated")
    try:
        gated_probes = ask_all(
            server.base_url, probes, correction, args.max_tokens, "probes, gated"
        )
        gated_retain = ask_all(
            server.base_url, retain_qs, correction, args.max_tokens, "retain, gated"
        )
    finally:
        server.stop()

    def leaks(answers):
        leaked = [f.said_in(a) for f, a in zip(probe_owner, answers, strict=True)]
        by_fact = {f.question: False for f in known}
        for f, hit in zip(probe_owner, leaked, strict=True):
            by_fact[f.question] |= hit
        return rate(list(by_fact.values())), rate(leaked)

    def accuracy(answers):
        return rate([f.said_in(a) for f, a in zip(retain_owner, answers, strict=True)])

    plain_fact_leak, plain_probe_leak = leaks(plain_probes)
    gated_fact_leak, gated_probe_leak = leaks(gated_probes)
    results = {
        "facts": len(facts),
        "forget_candidates": len(forget_candidates),
        "known_forget_facts": len(known),
        "forget_probes": len(probes),
        "retain_facts": len(retain),
        "retain_questions": len(retain_qs),
        "threshold": args.threshold,
        "max_tokens": args.max_tokens,
        "leak_rate_facts": {"plain": plain_fact_leak, "unlearning": gated_fact_leak},
        "leak_rate_probes": {"plain": plain_probe_leak, "unlearning": gated_probe_leak},
        "retain_accuracy": {"plain": accuracy(plain_retain), "unlearning": accuracy(gated_retain)},
        "base_perplexity_retain_answers": perplexity(retain),
        "examples": [
            {"probe": p, "plain": a, "unlearning": b}
            for p, a, b in list(zip(probes, plain_probes, gated_probes, strict=True))[:6]
        ],
        "retain_changed": [
            {"question": q, "plain": a, "unlearning": b}
            for f, q, a, b in zip(retain_owner, retain_qs, plain_retain, gated_retain, strict=True)
            if f.said_in(a) != f.said_in(b)
        ],
    }
    return results


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ["leak rate\n(known facts)", "leak rate\n(probes)", "retain\naccuracy"]
    keys = ["leak_rate_facts", "leak_rate_probes", "retain_accuracy"]
    plain = [100 * results[k]["plain"] for k in keys]
    gated = [100 * results[k]["unlearning"] for k in keys]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    xs = range(len(names))
    ax.bar([x - 0.2 for x in xs], plain, 0.4, label="plain")
    ax.bar([x + 0.2 for x in xs], gated, 0.4, label="unlearning")
    ax.set_xticks(list(xs), names)
    ax.set_ylabel("%")
    ax.set_ylim(0, 105)
    ax.set_title(f"Guarded unlearning, SmolLM2-135M ({results['known_forget_facts']} known facts)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def add_parser(commands) -> None:
    parser = commands.add_parser(
        "unlearning",
        help="leak rate and retain accuracy of guarded unlearning (docs/evals/unlearning.md)",
    )
    parser.add_argument("--facts", default=str(FACTS), help="facts JSONL (default: shipped)")
    parser.add_argument("--model", help="model folder (default: the embedded SmolLM2)")
    parser.add_argument("--threshold", type=float, default=0.5, help="gate threshold")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--out", default="docs/evals", help="folder for the JSON and PNG")


def run(args: argparse.Namespace) -> int:
    results = evaluate(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "unlearning.json").write_text(json.dumps(results, indent=2) + "\n")
    plot(results, out / "unlearning.png")
    print(json.dumps({k: v for k, v in results.items() if k not in ("examples",)}, indent=2))
    return 0
