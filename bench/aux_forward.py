"""One auxiliary model's decode step in isolation: the runner's forward for B rows of ragged
lengths, in these modes:

- ``eager``: the runner as it ships (on the CPU in bf16: linear layers packed for oneDNN,
  decoding/aux/packed.py);
- ``unpacked``: the same without packing (plain ``F.linear``);
- ``compiled``: the unpacked runner's model under ``torch.compile`` (dynamic shapes, inductor's
  freezing pass on, which packs CPU linears itself; the per-row attention stays eager);
- ``baseline REV`` (``--baseline REV``): the runner of another revision (e.g. the
  right-aligned static layout the per-row caches replaced).

Rows: prompt lengths drawn uniformly from [16, 512] with a fixed seed, prefilled once; then
``--steps`` decode steps timed, each row growing by one token per step. Every row of a batch is
in the cache (no joins), so this measures the steady decode step; joins and leaves are what
bench/traffic.py measures.

    .venv/bin/python -m bench.aux_forward --batch 1 8 32 --dtype bfloat16 float32 \\
        --modes eager unpacked compiled --baseline 8f5a398

Results (ms per step, median of ``--repeats`` interleaved repeats) are appended to
docs/bench/aux-forward.json; ``--table docs/bench/aux-forward.json`` prints the latest run's
table (the one in docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path

import torch

from adapters.default_model import ensure_default_model
from bench.decode_attention import BASELINE_RAGGED, baseline_ragged
from bench.revisions import module_at
from decoding.aux import ragged
from decoding.aux import runner as runner_module
from decoding.aux.runner import AuxModelRunner
from decoding.pipeline import TokenStream
from evals.results import add_table_option, append_run, machine, printed_table, read_runs

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "docs" / "bench" / "aux-forward.json"
MODES = ("eager", "unpacked", "compiled")


def _baseline_runner(rev: str) -> type:
    """``AuxModelRunner`` as decoding/aux/runner.py defines it at ``rev``, with that revision's
    decoding/aux/ragged.py where it has one (its relative import would otherwise get this
    revision's)."""
    replace = {}
    if baseline_ragged(rev) is not None:
        replace["from .ragged import"] = f"from .{BASELINE_RAGGED.rsplit('.', 1)[1]} import"
    runner = module_at(rev, "decoding/aux/runner.py", "decoding.aux._baseline_runner", replace)
    return runner.AuxModelRunner


def _unpacked(path: str, dtype: torch.dtype) -> AuxModelRunner:
    packs = runner_module.packs
    runner_module.packs = lambda *_: False
    try:
        return AuxModelRunner(path, dtype=dtype)
    finally:
        runner_module.packs = packs


def _compiled(path: str, dtype: torch.dtype) -> AuxModelRunner:
    """The unpacked runner with its model's forward compiled; the attention over per-row
    caches stays eager (a Python loop over rows, graph-broken)."""
    import torch._inductor.config as inductor  # noqa: PLC0415 (only this mode needs it)

    inductor.freezing = True
    runner = _unpacked(path, dtype)
    eager = ragged.ragged_attention
    ragged.AttentionInterface.register(ragged.ATTENTION, torch.compiler.disable(eager))
    runner.model.forward = torch.compile(runner.model.forward, dynamic=True)
    return runner


def time_steps(runner, batch: int, steps: int, seed: int) -> list[float]:
    rng = random.Random(seed)
    outputs = {k: [] for k in range(batch)}
    streams = {
        k: TokenStream([rng.randrange(100, 40000) for _ in range(rng.randint(16, 512))], outputs[k])
        for k in range(batch)
    }
    runner.step(streams)  # prefill
    times = []
    for _ in range(steps):
        for k in outputs:
            outputs[k].append(rng.randrange(100, 40000))
        started = time.perf_counter()
        runner.step(streams)
        times.append(time.perf_counter() - started)
    for k in list(streams):
        runner.release(k)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--dtype", nargs="+", default=["bfloat16"])
    parser.add_argument(
        "--modes", nargs="+", default=["eager", "unpacked", "compiled"], choices=MODES
    )
    parser.add_argument("--baseline", help="also time the runner of this git revision")
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", type=Path, default=RESULTS)
    add_table_option(parser)
    args = parser.parse_args()
    if printed_table(args, table):
        return
    torch.set_num_threads(args.threads)
    meta = machine()
    path = str(ensure_default_model())
    builders = {"eager": AuxModelRunner, "unpacked": _unpacked, "compiled": _compiled}
    makers = {mode: builders[mode] for mode in args.modes}
    if args.baseline:
        baseline = _baseline_runner(args.baseline)
        makers[f"baseline {args.baseline}"] = lambda p, dtype: baseline(p, dtype=dtype)
    records = []
    for dtype_name in args.dtype:
        dtype = getattr(torch, dtype_name)
        runners = {}
        for mode, make in makers.items():
            runners[mode] = make(path, dtype) if mode != "eager" else make(path, dtype=dtype)
            if mode == "compiled":
                started = time.perf_counter()
                for b in args.batch:  # compile outside the timings
                    time_steps(runners[mode], b, 3, seed=99)
                print(f"compile warm-up {dtype_name}: {time.perf_counter() - started:.1f} s")
        for batch in args.batch:
            samples: dict[str, list[float]] = {mode: [] for mode in runners}
            order = list(runners)
            for repeat in range(args.repeats):
                for mode in order if repeat % 2 == 0 else reversed(order):  # ABBA
                    times = time_steps(runners[mode], batch, args.steps, seed=batch)
                    samples[mode].append(statistics.median(times) * 1e3)
            for mode, values in samples.items():
                record = {
                    "dtype": dtype_name,
                    "batch": batch,
                    "mode": mode,
                    "ms_per_step": values,
                    "median_ms": statistics.median(values),
                    "tok_per_s": batch * 1e3 / statistics.median(values),
                }
                records.append(record)
                print(json.dumps(record), flush=True)
    result = {
        "threads": args.threads,
        "torch": torch.__version__,
        "model": "SmolLM2-135M (embedded)",
        "steps": args.steps,
        "repeats": args.repeats,
        "records": records,
    }
    append_run(args.output, result, meta)
    print(table(read_runs(args.output)[-1]))


def table(run: dict) -> str:
    """Markdown: median ms per decode step by rows and mode, and each mode over ``eager``."""
    cells = {(r["dtype"], r["batch"], r["mode"]): r["median_ms"] for r in run["records"]}
    dtypes = sorted({d for d, _, _ in cells})
    modes = list(dict.fromkeys(m for _, _, m in cells))
    header = " | ".join("eager (ships)" if m == "eager" else m for m in modes)
    lines = [f"| dtype | rows | {header} |", "|---|---:|" + "---:|" * len(modes)]
    for dtype in dtypes:
        for batch in sorted({b for d, b, _ in cells if d == dtype}):
            eager = cells.get((dtype, batch, "eager"))
            row = []
            for mode in modes:
                ms = cells.get((dtype, batch, mode))
                ratio = f" ({ms / eager:.2f}x)" if eager and ms and mode != "eager" else ""
                row.append("" if ms is None else f"{ms:.0f} ms{ratio}")
            lines.append(f"| {dtype} | {batch} | " + " | ".join(row) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
