"""What hostile request bodies cost the server: the figures quoted in docs/security.md.

Each case runs the server's own code in this process, ``--repeats`` times, and records every
time with min / median / max:

- ``json_*``: ``json.loads`` of 4 MB bodies of different shapes (the parser holds the GIL, so
  its time is the event loop's), and of the largest body ``[limits] max_json_values`` admits;
- ``read_json_*``: ``server.request_body.read_json`` on a starlette request carrying the body,
  at the default limits (a body over ``max_json_values`` is refused before it is parsed);
- ``gate_refuse_4mb``: the unlearning gate's admission check refusing 4 MB of text;
- ``gate_*_at_caps``: embedding the most text the gate's caps admit (one torch thread, as the
  server's gate runs), prose and the worst case of one long sentence of rare tokens;
- ``regex_quadratic_unbounded``: an RE2 pattern whose every match scans to the end of a 64 KB
  answer (``a(.*b)?`` over ``a`` x 65536), without the server's deadline.

    .venv/bin/python -m bench.security_costs          # appends a run to docs/bench/security-costs.json
    .venv/bin/python -m bench.security_costs --table docs/bench/security-costs.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import re2
import torch
from starlette.requests import Request

from decoding.unlearning.admission import request_texts
from decoding.unlearning.embeddings import minilm
from decoding.unlearning.gate import chunks
from evals.results import add_table_option, append_run, machine, printed_table, read_runs
from server.config import LimitsConfig
from server.errors import APIError
from server.request_body import read_json

RESULTS = Path(__file__).resolve().parent.parent / "docs" / "bench" / "security-costs.json"
MB4 = 4 * 1024 * 1024


def _request(body: bytes) -> Request:
    sent = False

    async def receive() -> dict:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    return Request({"type": "http", "method": "POST", "headers": headers}, receive)


def _read_json(body: bytes, limits: LimitsConfig) -> Callable[[], str]:
    def run() -> str:
        try:
            asyncio.run(read_json(_request(body), limits))
        except APIError as error:
            return f"{error.status} {error.code}"
        return "200 parsed"

    return run


def _prose(chars: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    words = [
        "the",
        "of",
        "a",
        "river",
        "city",
        "capital",
        "museum",
        "wrote",
        "painted",
        "built",
        "north",
        "old",
        "new",
    ]
    out = []
    while sum(map(len, out)) < chars:
        out.append(" ".join(rng.choice(words) for _ in range(rng.randint(2, 5))).capitalize() + ".")
    return " ".join(out)[:chars]


def _rare_sentence(chars: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    return "".join(rng.choice("qxzjkvwy") for _ in range(chars))


def _done(fn: Callable[[], object]) -> Callable[[], str]:
    def run() -> str:
        fn()
        return "done"

    return run


def cases(limits: LimitsConfig) -> dict[str, tuple[Callable[[], str], str]]:
    """Each case: what to time, and what it is."""
    values = limits.max_json_values
    at_cap = b'{"prompt": [' + b"1," * (values - 3) + b"1]}"  # values - 1 counted
    over_cap = b'{"prompt": [' + b"1," * (MB4 // 2 - 10) + b"1]}"
    brackets = b"[" + b"[]," * (MB4 // 3 - 1) + b"[]]"
    numbers = b"[" + b"1," * (2_000_000 - 1) + b"1]"
    string = json.dumps("a" * MB4).encode()
    embedder = minilm()
    gate_texts = {
        "prose": [_prose(limits.max_gate_chars - 112)],
        "rare": [_rare_sentence(limits.max_gate_chars - 192)],
    }
    huge = {"messages": [{"role": "user", "content": "a" * MB4}]}
    pattern = re2.compile("a(.*b)?")
    answer = "a" * 65536

    def refuse_huge_text() -> str:
        size = sum(len(t) for t in request_texts(huge))
        return "400 refused" if size > limits.max_gate_chars else "admitted"

    return {
        "json_brackets_4mb": (_done(lambda: json.loads(brackets)), "json.loads of 4 MB of `[],`"),
        "json_numbers_2m": (_done(lambda: json.loads(numbers)), "json.loads of 2M numbers"),
        "json_string_4mb": (_done(lambda: json.loads(string)), "json.loads of one 4 MB string"),
        "json_at_max_values": (
            _done(lambda: json.loads(at_cap)),
            f"json.loads of {values} numbers (the most max_json_values admits)",
        ),
        "read_json_at_max_values": (_read_json(at_cap, limits), "read_json, at the cap: parsed"),
        "read_json_over_max_values": (
            _read_json(over_cap, limits),
            "read_json, 4 MB over the cap: refused before parsing",
        ),
        "gate_refuse_4mb": (refuse_huge_text, "gate admission check refusing 4 MB of text"),
        "gate_prose_at_caps": (
            _done(lambda: embedder.encode(chunks(gate_texts["prose"]))),
            f"gate embedding {len(gate_texts['prose'][0])} characters of short sentences "
            f"({len(chunks(gate_texts['prose']))} pieces)",
        ),
        "gate_rare_at_caps": (
            _done(lambda: embedder.encode(chunks(gate_texts["rare"]))),
            f"gate embedding one sentence of {len(gate_texts['rare'][0])} random rare letters "
            f"({len(chunks(gate_texts['rare']))} windows)",
        ),
        "regex_quadratic_unbounded": (
            lambda: f"{sum(1 for _ in pattern.finditer(answer))} matches",
            "RE2 `a(.*b)?` over 64 KB of `a`, every match, no deadline",
        ),
    }


def table(run: dict) -> str:
    """Markdown: every case's times (ms), min / median / max."""
    lines = ["| case | outcome | min / median / max (ms) |", "|---|---|---|"]
    for name, case in run["cases"].items():
        ms = case["ms"]
        lines.append(
            f"| {name}: {case['what']} | {case['outcome']} "
            f"| {min(ms):.2f} / {statistics.median(ms):.2f} / {max(ms):.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--output", type=Path, default=RESULTS)
    add_table_option(parser)
    args = parser.parse_args()
    if printed_table(args, table):
        return
    torch.set_num_threads(1)
    meta = machine()
    limits = LimitsConfig()
    measured: dict[str, dict] = {}
    for name, (run, what) in cases(limits).items():
        run()  # warm-up: first-call costs (imports, allocations) are not the steady cost
        times, outcome = [], None
        for _ in range(args.repeats):
            started = time.perf_counter()
            outcome = run()
            times.append((time.perf_counter() - started) * 1e3)
        measured[name] = {"what": what, "outcome": outcome, "ms": times}
        measured[name]["median_ms"] = statistics.median(times)
        print(f"{name}: median {measured[name]['median_ms']:.1f} ms ({outcome})", flush=True)
    result = {
        "repeats": args.repeats,
        "limits": {
            "max_json_values": limits.max_json_values,
            "max_gate_chars": limits.max_gate_chars,
            "max_request_bytes": limits.max_request_bytes,
        },
        "torch_threads": 1,
        "cases": measured,
    }
    append_run(args.output, result, meta)
    print(table(read_runs(args.output)[-1]))


if __name__ == "__main__":
    main()
