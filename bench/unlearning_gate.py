"""The unlearning gate's own cost in the server process, without the engine: ``c`` chat
requests arriving together (bench/unlearning.py's prompts and forget set), each through the
gate's ``prepare`` and ``admit`` (decoding/unlearning/admission.py), against the gate and
MiniLM wrapper of another revision (``--baseline``).

One torch thread, as the server sets for the gate (decoding/unlearning/correction.py). A
repeat is ``--rounds`` rounds; a round sends ``c`` requests at once and waits for every
decision; its figure is the round's wall time per request (ms). Modes alternate ABBA
(bench/revisions.py ``time_abba``). The decisions of both modes are checked equal.

    .venv/bin/python -m bench.unlearning_gate --concurrency 1 8 --baseline a646ff2

Results (each round's ms per request, per mode and concurrency the median) are appended as a
run to docs/bench/unlearning-gate.json.

Two more modes have the gate's piece cache on (``[limits] gate_cache_pieces``, off by
default; decoding/unlearning/piece_cache.py): "current, piece cache on" gets the same requests,
which repeat across repeats (as bench/unlearning.py's runs repeat theirs), so after its first
repeat it reads every piece from its cache; "current, piece cache on, novel requests" never
sees a request twice: each request's user message carries its own number (its system prompt
and chat markup are the others'), the traffic where only the shared pieces are cached; its
decisions are not compared (other texts).

``--continuation`` instead times the continuation check's semantic part
(decoding/unlearning/continuation.py) as the engine process runs it, on one torch thread: per
gated row every ``k`` steps, MiniLM embeds the row's last 8 tokens' text and that text followed
by each of its 8 candidates. Windows slide over a fixed English passage (SmolLM2's tokens),
the candidates are the passage's next token and 7 other tokens of it; a repeat is every window
of the passage for ``rows`` rows whose checks fall on the same step (rows that started
together). Appended to docs/bench/unlearning-continuation.json: ms per step that carries the
checks of 1 and of 8 rows.

``--forward`` times MiniLM's forward as the gate runs it (decoding/unlearning/embeddings.py,
one row of ``n`` word pieces, one torch thread) for several ``n``, with the rate its linear
layers reach (``2 n`` FLOPs per weight), beside a 1024 x 1024 float32 matrix product's rate on
the same thread (about the best torch reaches on this core), and the word pieces of
bench/unlearning.py's chat request. For each ``--concurrency`` ``c``, it also counts the word
pieces of a wave of ``c`` of those requests arriving together (their distinct texts: what the
gate embeds at least) and the time the forward's linear layers would take for them at the
product's rate, a lower bound on the wave's gate on one thread. Appended to
docs/bench/unlearning-gate-forward.json.

``--join --baseline REV`` times what a gated row's continuation check costs when the row joins,
with bench/unlearning.py's 10,000 phrases: the baseline's check built from the phrases for the
row, against this revision's, whose phrase index is built once per set of retrieved entries
(reported apart) and shared by the rows. ABBA, ``--repeats`` repeats of one row each; appended
to docs/bench/unlearning-continuation.json.

``--threads`` times the gate's encode of a wave of eight requests' texts (bench/unlearning.py's,
as ``--forward`` counts them) on one torch thread and on two, alternating, first with no
server running, then beside a ``corrigo serve`` of the embedded model (eager), each encode
right after a short request has finished: the moment a wave's gate runs, when vLLM's CPU
worker polls its queue for a while after its last step. In this process, not the server's (the
cores are what is shared). Appended to docs/bench/unlearning-gate-threads.json.

    flock /tmp/corrigo-engine.lock .venv/bin/python -m bench.unlearning_gate --threads
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import torch
from prometheus_client import CollectorRegistry
from transformers import AutoTokenizer

from adapters.engine import resolve_model
from bench.revisions import module_at, time_abba
from bench.serving import TOPICS
from bench.unlearning import phrases, story_prompts
from decoding.unlearning import ForgetEntry, ForgetSet
from decoding.unlearning import admission as admission_module
from decoding.unlearning import embeddings as embeddings_module
from decoding.unlearning.continuation import ContinuationCheck, PhraseIndex, TokenTexts
from decoding.unlearning.gate import chunks
from decoding.unlearning.params import UnlearningParams
from decoding.unlearning.phrases import forbidden_phrases
from evals.results import append_run, arguments, machine
from server.config import LimitsConfig
from server.launcher import start_server
from server.metrics import ServerMetrics
from server.toml_writer import write_config

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "docs" / "bench" / "unlearning-gate.json"
CONTINUATION_RESULTS = REPO / "docs" / "bench" / "unlearning-continuation.json"
FORWARD_RESULTS = REPO / "docs" / "bench" / "unlearning-gate-forward.json"
THREADS_RESULTS = REPO / "docs" / "bench" / "unlearning-gate-threads.json"
#: Word pieces of the forwards ``--forward`` times.
FORWARD_PIECES = (8, 32, 64, 136, 256)
PASSAGE = (
    "Once upon a time, in a small village by the sea, there lived an old lighthouse keeper "
    "named Tom. Every night he climbed the winding stairs to light the lamp, and every "
    "morning he watched the fishing boats return safely to the harbour. One stormy evening, "
    "a young girl knocked on his door, soaked and shivering, asking for shelter."
)
SET = "p10000"
#: The modes with the piece cache on (see the module docstring), and its size there.
CACHED = "current, piece cache on"
NOVEL = "current, piece cache on, novel requests"
CACHE_PIECES = 4096


def novel_prompts(tokenizer, numbers: list[int]) -> list[str]:
    """bench/unlearning.py's chat requests, each user message numbered (never seen before)."""
    return [
        tokenizer.apply_chat_template(
            [
                {
                    "role": "user",
                    "content": f"Write a short story about {TOPICS[n % len(TOPICS)]} (#{n}).",
                }
            ],
            tokenize=False,
            add_generation_prompt=True,
        )
        for n in numbers
    ]


def gate_of(modules, limits: LimitsConfig | None = None) -> object:
    """An :class:`UnlearningGate` of ``modules`` (admission, embeddings) over bench/unlearning.py's
    set, with ``limits`` (default: the defaults, no piece cache)."""
    admission, embeddings = modules
    forget_set = ForgetSet(
        SET, (ForgetEntry("Write a short story.", "A story about a city."),)
    )  # bench/unlearning.py's entry: the gate reads its question and answer only
    return admission.UnlearningGate(
        {SET: forget_set},
        embeddings.MiniLM(),
        ServerMetrics(CollectorRegistry()),
        {},
        limits or LimitsConfig(),
    )


def round_ms(gate, prompts: list[str]) -> tuple[float, list]:
    """One round: every prompt at once through ``prepare`` and ``admit``; wall ms per
    request and the decisions."""
    params = UnlearningParams(forget_set=SET, threshold=0.0)

    async def main():
        jobs = [gate.prepare(params, {"prompt": p}) for p in prompts]
        return await asyncio.gather(*(gate.admit(params, job) for job in jobs))

    started = time.perf_counter()
    admitted = asyncio.run(main())
    wall = (time.perf_counter() - started) * 1e3
    return wall / len(prompts), [a.state.decision for a in admitted]


def continuation_ms(tokenizer, rows: int, repeats: int) -> tuple[list[dict], list[dict]]:
    """Each repeat's ms per step for steps that carry ``rows`` rows' semantic checks."""
    check = ContinuationCheck(
        PhraseIndex(["city"]),  # bench/unlearning.py's entry: its answer's revealing word
        TokenTexts(tokenizer.batch_decode([[i] for i in range(len(tokenizer))])),
        embeddings_module.minilm(),
        embeddings_module.minilm().encode(["city"]),
    )
    ids = tokenizer(PASSAGE, add_special_tokens=False)["input_ids"]
    texts = check.vocabulary.texts
    records = []
    for repeat in range(repeats):
        times = []
        for end in range(8, len(ids) - 1):
            window = check.vocabulary.text(ids[end - 8 : end])
            others = [ids[(end * 7 + j * 13) % len(ids)] for j in range(7)]
            candidates = [texts[t] for t in (ids[end], *others)]
            started = time.perf_counter()
            for _ in range(rows):  # each row's check, as the plugin runs them in a step
                check.similarity([window, *(window + c for c in candidates)])
            times.append((time.perf_counter() - started) * 1e3)
        records.append({"rows": rows, "repeat": repeat, "ms": times})
    return records, [
        {"rows": rows, "median_ms": statistics.median(t for r in records for t in r["ms"])}
    ]


def median_ms(run, calls: int) -> float:
    """The median of ``calls`` timed calls of ``run`` (after two untimed ones), in ms."""
    for _ in range(2):
        run()
    times = []
    for _ in range(calls):
        started = time.perf_counter()
        run()
        times.append((time.perf_counter() - started) * 1e3)
    return statistics.median(times)


def wave_texts(tokenizer, concurrency: int) -> list[str]:
    """The distinct texts of ``concurrency`` of bench/unlearning.py's requests arriving
    together: what the gate embeds at least (its batcher embeds each distinct text once,
    decoding/unlearning/batcher.py)."""
    prompts = story_prompts(tokenizer, concurrency)
    return list(dict.fromkeys(text for prompt in prompts for text in chunks([prompt])))


def wave_pieces(minilm, tokenizer, concurrency: int) -> int:
    """MiniLM word pieces of :func:`wave_texts`."""
    texts = wave_texts(tokenizer, concurrency)
    return sum(len(i) for i in minilm.tokenizer(texts)["input_ids"])


def forward_cost(tokenizer, repeats: int, concurrency: list[int]) -> tuple[list[dict], list[dict]]:
    """Each repeat's ms per MiniLM forward of ``n`` word pieces and its linear layers' GFLOP/s;
    a 1024^3 float32 product's GFLOP/s; the chat request's word pieces, and each wave's with
    the time its linear layers would take at the product's rate (the module docstring)."""
    minilm = embeddings_module.MiniLM()
    weights = sum(
        m.weight.numel() for m in minilm.bert.encoder.modules() if isinstance(m, torch.nn.Linear)
    )
    request_pieces = wave_pieces(minilm, tokenizer, 1)
    rng = random.Random(0)
    words = list(range(1000, minilm.tokenizer.vocab_size))
    square = torch.randn(1024, 1024, generator=torch.Generator().manual_seed(0))
    records = []
    with torch.inference_mode():
        for repeat in range(repeats):
            for n in FORWARD_PIECES:
                text = [rng.choice(words) for _ in range(n)]
                ms = median_ms(lambda text=text: minilm._forward([[text]]), 10)
                gflops = 2 * n * weights / ms / 1e6
                records.append({"repeat": repeat, "pieces": n, "ms": ms, "linear_gflops": gflops})
            ms = median_ms(lambda: square @ square, 10)
            records.append({"repeat": repeat, "matmul_1024_gflops": 2 * 1024**3 / ms / 1e6})
            print(records[-1], flush=True)
    summary = [
        {
            "pieces": n,
            "median_ms": statistics.median(r["ms"] for r in records if r.get("pieces") == n),
            "linear_gflops": statistics.median(
                r["linear_gflops"] for r in records if r.get("pieces") == n
            ),
        }
        for n in FORWARD_PIECES
    ]
    rate = statistics.median(r["matmul_1024_gflops"] for r in records if "matmul_1024_gflops" in r)
    summary.append(
        {"matmul_1024_gflops": rate, "linear_weights": weights, "request_pieces": request_pieces}
    )
    for c in concurrency:
        pieces = wave_pieces(minilm, tokenizer, c)
        summary.append(
            {
                "concurrency": c,
                "wave_pieces": pieces,
                "linear_ms_at_matmul_rate": 2 * pieces * weights / rate / 1e6,
            }
        )
    return records, summary


def threads_beside_engine(tokenizer, repeats: int) -> tuple[list[dict], list[dict]]:
    """Each repeat's ms per encode of a wave of eight's texts on 1 and on 2 torch threads, with
    no server and right after a request to one (the module docstring)."""
    minilm = embeddings_module.MiniLM()
    texts = wave_texts(tokenizer, 8)
    threads = (1, 2)

    def encode_ms(count: int) -> float:
        torch.set_num_threads(count)
        started = time.perf_counter()
        minilm.encode(texts)
        return (time.perf_counter() - started) * 1e3

    def timed(setting: str, before: Callable[[], None]) -> list[dict]:
        for count in threads:  # warm-up, untimed
            before()
            encode_ms(count)
        out = []
        for repeat in range(repeats):
            for count in threads if repeat % 2 == 0 else threads[::-1]:
                before()
                ms = encode_ms(count)
                out.append({"setting": setting, "threads": count, "repeat": repeat, "ms": ms})
                print(out[-1], flush=True)
        return out

    records = timed("no server", lambda: None)
    model = resolve_model(None, None)
    with tempfile.TemporaryDirectory() as tmp:
        config = write_config(
            Path(tmp) / "bench.toml",
            {
                "model": {"path": model.path, "served_model_name": model.model_id},
                "engine": {"max_model_len": 2048, "enforce_eager": True},
                "server": {"log_level": "warning"},
            },
        )
        server = start_server(config, Path(tmp) / "server.log")
        try:
            with httpx.Client(base_url=server.base_url, timeout=120) as client:
                request = {"model": model.model_id, "prompt": "Once upon a time", "max_tokens": 4}
                records += timed(
                    "right after a request",
                    lambda: client.post("/v1/completions", json=request).raise_for_status(),
                )
        finally:
            server.stop()
        torch.set_num_threads(1)
    summary = [
        {
            "setting": setting,
            "threads": count,
            "median_ms": statistics.median(
                r["ms"] for r in records if r["setting"] == setting and r["threads"] == count
            ),
        }
        for setting in ("no server", "right after a request")
        for count in threads
    ]
    return records, summary


def join_ms(tokenizer, baseline: str, repeats: int) -> tuple[list[dict], list[dict]]:
    """Ms to build one joining row's check: this revision (index shared, built apart) and the
    baseline's (built per row); and the index's own build, once per set of entries."""
    old = module_at(
        baseline,
        "decoding/unlearning/continuation.py",
        "decoding.unlearning._baseline_continuation",
    )
    entry = ForgetEntry(
        "Write a short story.", "A story about a city.", tuple(phrases(tokenizer, 10_000))
    )
    forbidden = forbidden_phrases([entry])
    vocabulary = TokenTexts(tokenizer.batch_decode([[i] for i in range(len(tokenizer))]))
    started = time.perf_counter()
    index = PhraseIndex(forbidden)
    index_ms = (time.perf_counter() - started) * 1e3
    builds = {
        "current": lambda: ContinuationCheck(index, vocabulary),
        f"baseline {baseline}": lambda: old.ContinuationCheck(tuple(forbidden), vocabulary),
    }
    records = []
    for repeat in range(repeats):
        for mode in list(builds) if repeat % 2 == 0 else list(builds)[::-1]:
            started = time.perf_counter()
            builds[mode]()
            ms = (time.perf_counter() - started) * 1e3
            records.append({"mode": mode, "repeat": repeat, "ms": ms})
            print(mode, repeat, f"{ms:.1f} ms", flush=True)
    summary = [
        {"mode": m, "median_ms": statistics.median(r["ms"] for r in records if r["mode"] == m)}
        for m in builds
    ]
    summary.append({"mode": "current, phrase index once per entries", "median_ms": index_ms})
    return records, summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--baseline", help="git revision whose gate and MiniLM wrapper to compare")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=2, help="ABBA pairs per concurrency")
    parser.add_argument("--output", type=Path, default=None)
    parser.add_argument("--continuation", action="store_true")
    parser.add_argument("--join", action="store_true")
    parser.add_argument("--forward", action="store_true", help="MiniLM's forward alone")
    parser.add_argument("--threads", action="store_true", help="1 or 2 threads beside the engine")
    args = parser.parse_args()
    torch.set_num_threads(1)
    tokenizer = AutoTokenizer.from_pretrained(resolve_model(None, None).path)

    def record(path: Path, measure: Callable[[], tuple[list[dict], list[dict]]]) -> None:
        """Run ``measure`` and append its records and summary to ``path`` (or ``--output``)."""
        meta = machine()
        records, summary = measure()
        for row in summary:
            print(row)
        append_run(
            args.output or path,
            {"args": arguments(args), "records": records, "summary": summary},
            meta,
        )

    if args.forward:
        record(FORWARD_RESULTS, lambda: forward_cost(tokenizer, args.repeats, args.concurrency))
        return
    if args.threads:
        record(THREADS_RESULTS, lambda: threads_beside_engine(tokenizer, args.repeats))
        return
    if args.join:
        meta = machine()
        records, summary = join_ms(tokenizer, args.baseline, args.repeats)
        for row in summary:
            print(row)
        append_run(
            args.output or CONTINUATION_RESULTS,
            {"args": {**vars(args), "output": None}, "join": records, "summary": summary},
            meta,
        )
        return
    if args.continuation:
        meta = machine()
        records, summary = [], []
        for rows in (1, 8):
            got = continuation_ms(tokenizer, rows, args.repeats)
            records += got[0]
            summary += got[1]
            print(summary[-1])
        append_run(
            args.output or CONTINUATION_RESULTS,
            {"args": {**vars(args), "output": None}, "records": records, "summary": summary},
            meta,
        )
        return
    prompts = story_prompts(tokenizer, max(args.concurrency) * args.rounds)
    cached = LimitsConfig(gate_cache_pieces=CACHE_PIECES)
    modes = {
        "current": gate_of((admission_module, embeddings_module)),
        CACHED: gate_of((admission_module, embeddings_module), cached),
        NOVEL: gate_of((admission_module, embeddings_module), cached),
    }
    if args.baseline:
        modes[f"baseline {args.baseline}"] = gate_of(
            (
                module_at(
                    args.baseline,
                    "decoding/unlearning/admission.py",
                    "decoding.unlearning._baseline_admission",
                ),
                module_at(
                    args.baseline,
                    "decoding/unlearning/embeddings.py",
                    "decoding.unlearning._baseline_embeddings",
                ),
            )
        )
    decisions: dict[str, list] = {mode: [] for mode in modes}
    for gate in modes.values():  # load and warm both before timing
        round_ms(gate, prompts[:2])

    fresh = itertools.count()

    def times(gate, c: int, repeat: int) -> list[float]:
        out = []
        mode = next(m for m, g in modes.items() if g is gate)
        for r in range(args.rounds):
            if mode == NOVEL:
                batch = novel_prompts(tokenizer, [next(fresh) for _ in range(c)])
            else:
                batch = prompts[r * c : (r + 1) * c]
            ms, made = round_ms(gate, batch)
            out.append(ms)
            decisions[mode].append((c, repeat, r, made))
        return out

    meta = machine()
    records, summary = time_abba(modes, args.concurrency, args.repeats, times)
    for mode in set(modes) - {NOVEL}:  # same requests, same decisions (score within noise)
        for (c, rep, r, made), (_, _, _, ref) in zip(
            sorted(decisions[mode]), sorted(decisions["current"]), strict=True
        ):
            for a, b in zip(made, ref, strict=True):
                assert a.targets == b.targets and abs(a.score - b.score) < 1e-5, (c, rep, r)
    append_run(
        args.output or RESULTS,
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
