"""Guarded unlearning's cost per engine step in isolation, with 10,000 forbidden phrases: the
correction pipeline's ``apply`` for B rows that all carry the filters (soft penalty, hard
trie bans, the pipeline's re-applied engine masks), against the pipeline and plugin of
another revision (``--baseline``).

The forget set is bench/unlearning.py's (one entry of ``--phrases`` random 1-3 word phrases,
every surface form tokenized by the embedded SmolLM2's tokenizer); the soft filter's token
table is random unit vectors of MiniLM's width (a step subtracts a constant vector whatever
its values; building the real table takes minutes) and the words are embedded by a random
projection of the same width. Each row's output grows by one random token per step. Modes
alternate ABBA on one torch thread, as in vLLM's CPU worker.

    .venv/bin/python -m bench.unlearning_step --batch 1 8 32 --baseline d032322

``--continuation`` also runs the continuation check's lexical part, as served (its semantic
part is off by default): the filters get the tokenizer's token texts, and each row's output
follows an English passage (bench/unlearning_gate.py ``PASSAGE``, row ``r`` from its token
``7 r``) instead of random tokens, since what the check does depends on the text's words.

Results (every step's ms, per mode and batch the median) are appended as a run to
docs/bench/unlearning-step.json.
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

import torch
from transformers import AutoTokenizer

from adapters.engine import resolve_model
from bench.revisions import module_at, time_abba
from bench.unlearning import phrases
from bench.unlearning_gate import PASSAGE
from decoding import pipeline as pipeline_module
from decoding.correction import parse_correction
from decoding.unlearning import FORGET_SETS_CONTEXT, GATED_CONTEXT, ForgetEntry, ForgetSet
from decoding.unlearning import plugin as plugin_module
from decoding.unlearning.continuation import TokenTexts
from evals.results import append_run, arguments, machine

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "docs" / "bench" / "unlearning-step.json"
WIDTH = 384  # MiniLM's embedding width


class RandomWords:
    """Unit vectors for words, from a fixed random projection of their bytes."""

    def __init__(self) -> None:
        self.projection = torch.randn(256, WIDTH, generator=torch.Generator().manual_seed(0))

    def encode(self, texts: list[str]) -> torch.Tensor:
        counts = torch.zeros(len(texts), 256)
        for i, text in enumerate(texts):
            for byte in text.encode():
                counts[i, byte] += 1
        return torch.nn.functional.normalize(counts @ self.projection, dim=-1)


def baseline_modules(rev: str):
    pipeline = module_at(rev, "decoding/pipeline.py", "decoding._baseline_pipeline", {})
    module_at(
        rev, "decoding/unlearning/continuation.py", "decoding.unlearning._baseline_continuation"
    )
    plugin = module_at(
        rev,
        "decoding/unlearning/plugin.py",
        "decoding.unlearning._baseline_plugin",
        {"from .continuation import": "from ._baseline_continuation import"},
    )
    return pipeline, plugin


def step_times(
    modules, forget_set, encode, table, batch, steps, vocab, seed, texts=None, passage=None
) -> list[float]:
    """Each step's ms (the first, where the rows join, left out). ``texts``: the token texts
    that turn the continuation check on; ``passage``: token ids the rows' outputs follow."""
    pipeline_mod, plugin_mod = modules
    filters = plugin_mod.ForgetFilters(forget_set, encode, RandomWords(), table, vocabulary=texts)
    filters.compile((0,))  # once per (set, entries), cached: not a step's cost
    plugin = plugin_mod.Unlearning({"set": filters}, observe=lambda *a: None)
    pipeline = pipeline_mod.CorrectionPipeline({"unlearning": plugin})
    spec = parse_correction(
        {"unlearning": {"forget_set": "set", "targets": [0]}},
        context={FORGET_SETS_CONTEXT: {"set": 1}, GATED_CONTEXT: True},
    )
    rng = random.Random(seed)
    outputs = []
    for row in range(batch):
        outputs.append([])
        pipeline.add(row, spec, [1, 2, 3], outputs[-1], stop=0)
    gen = torch.Generator().manual_seed(seed)
    times = []
    for step in range(steps + 1):
        for row, output in enumerate(outputs):
            if passage is None:
                output.append(rng.randrange(vocab))
            else:
                output.append(passage[(7 * row + step) % len(passage)])
        logits = torch.randn(batch, vocab, generator=gen) * 3
        started = time.perf_counter()
        pipeline.apply(logits)
        if step:  # the first step builds the rows' states
            times.append((time.perf_counter() - started) * 1e3)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--phrases", type=int, default=10_000)
    parser.add_argument("--baseline", help="git revision whose pipeline and plugin to compare")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=2, help="ABBA pairs per batch")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--continuation", action="store_true", help="the check's lexical part on")
    args = parser.parse_args()
    torch.set_num_threads(1)
    meta = machine()
    tokenizer = AutoTokenizer.from_pretrained(resolve_model(None, None).path)
    vocab = len(tokenizer)
    entry = ForgetEntry("Write a short story.", "A story about a city.")
    entry = ForgetEntry(entry.question, entry.answer, tuple(phrases(tokenizer, args.phrases)))
    forget_set = ForgetSet("set", (entry,))

    def encode(texts: list[str]) -> list[list[int]]:
        return tokenizer(texts, add_special_tokens=False)["input_ids"]

    table = torch.nn.functional.normalize(
        torch.randn(vocab, WIDTH, generator=torch.Generator().manual_seed(1)), dim=-1
    )
    texts = passage = None
    if args.continuation:
        texts = TokenTexts(tokenizer.batch_decode([[i] for i in range(vocab)]))
        passage = tokenizer(PASSAGE, add_special_tokens=False)["input_ids"]
    modes = {"current": (pipeline_module, plugin_module)}
    if args.baseline:
        modes[f"baseline {args.baseline}"] = baseline_modules(args.baseline)
    records, summary = time_abba(
        modes,
        args.batch,
        args.repeats,
        lambda modules, batch, repeat: step_times(
            modules, forget_set, encode, table, batch, args.steps, vocab, repeat, texts, passage
        ),
    )
    append_run(
        args.output,
        {
            "args": arguments(args),
            "records": records,
            "summary": summary,
        },
        meta,
    )
    for row in summary:
        print(row)


if __name__ == "__main__":
    main()
