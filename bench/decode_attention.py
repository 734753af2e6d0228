"""The auxiliary forward's attention alone, for decoding rows (one new token each): the shipped
per-row attention against one SDPA call over all rows, on the embedded SmolLM2-135M's shapes.

Modes, each running every layer's attention for ``B`` decoding rows per step:

- ``ships``: decoding/aux/ragged.py's ``ragged_attention`` (all rows' new keys and values
  written with one multi-tensor copy per layer, then one SDPA call per row over its own
  columns);
- ``per-row REV`` (``--baseline REV``): the same function as it is at git revision ``REV``
  (each row written, then attended, one at a time);
- ``one call, gathered``: each row's columns copied into one ``[B, kv_heads, longest, dim]``
  tensor per layer, then one SDPA call with a key mask over the padding (the per-row caches
  as they are, attended in one call);
- ``one call, pooled``: the rows' caches as one ``[B, kv_heads, capacity, dim]`` tensor per
  layer (a layout padded to the longest row), the new columns written by one indexed copy,
  then one SDPA call with a key mask (no gather; what a slot layout would cost).

Every mode computes the same outputs (checked before timing: equal to ``ships`` within bf16
rounding). Rows (fixed seed): a prompt of uniform 16-512 tokens plus uniform 0-256 already
generated (bench/traffic.py's ranges), bf16 (the dtype an auxiliary model runs in beside a
bf16 engine), one torch thread. Timed: the thread's CPU time per step (all layers), median
over ``--steps`` steps, modes interleaved ABBA (bench/revisions.py ``time_abba``); the wall
time is recorded too. CPU time is the measure because the machine these ran on is shared:
another process's load stretches wall time far more than a single thread's CPU time.

    .venv/bin/python -m bench.decode_attention --batch 1 8 32 --baseline a646ff2 --repeats 4

Runs are appended to docs/bench/decode-attention.json; ``--table FILE`` prints the latest
run's table (the one in docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
import torch.nn.functional as F

from bench.revisions import module_at, time_abba
from decoding.aux import ragged
from evals.results import add_table_option, append_run, machine, printed_table, read_runs

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "docs" / "bench" / "decode-attention.json"
#: SmolLM2-135M (the embedded default model): layers, query heads, key/value heads, head dim.
LAYERS, HEADS, KV_HEADS, DIM = 30, 9, 3, 64
DTYPE = torch.bfloat16
#: The module name a baseline revision's ragged.py is imported as (inside decoding.aux).
BASELINE_RAGGED = "decoding.aux._baseline_ragged"


def baseline_ragged(rev: str) -> ModuleType | None:
    """decoding/aux/ragged.py at ``rev`` (None if it has none), its attention registered under
    another name, so that this revision's stays registered beside it."""
    present = subprocess.run(
        ["git", "cat-file", "-e", f"{rev}:decoding/aux/ragged.py"], cwd=REPO, capture_output=True
    )
    if present.returncode:
        return None
    name = f'"{ragged.ATTENTION}"'
    return module_at(
        rev,
        "decoding/aux/ragged.py",
        BASELINE_RAGGED,
        replace={f"ATTENTION = {name}": f'ATTENTION = "{ragged.ATTENTION}_baseline"'},
    )


class _Layer(torch.nn.Module):
    def __init__(self, index: int):
        super().__init__()
        self.layer_idx = index


LAYER_MODULES = [_Layer(i) for i in range(LAYERS)]


@dataclass
class Inputs:
    """One step's queries, keys and values per layer, ``[1, heads, B, dim]``."""

    query: list[torch.Tensor]
    key: list[torch.Tensor]
    value: list[torch.Tensor]


def lengths(batch: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randint(16, 512) + rng.randint(0, 256) for _ in range(batch)]


def inputs(batch: int, seed: int) -> Inputs:
    generator = torch.Generator().manual_seed(seed)

    def draw(heads: int) -> list[torch.Tensor]:
        return [
            torch.randn(1, heads, batch, DIM, generator=generator).to(DTYPE) for _ in range(LAYERS)
        ]

    return Inputs(draw(HEADS), draw(KV_HEADS), draw(KV_HEADS))


class RowsMode:
    """``ragged_attention`` of a given ragged module over its own per-row caches."""

    def __init__(self, module: ModuleType, lengths: list[int], seed: int):
        generator = torch.Generator().manual_seed(seed)
        self.module = module
        self.rows = []
        for length in lengths:
            cache = module.RowCache((LAYERS, KV_HEADS, DIM), DTYPE, torch.device("cpu"))
            cache.reserve(length)
            cache.store.copy_(torch.randn(cache.store.shape, generator=generator).to(DTYPE))
            cache.cached = length
            self.rows.append(cache)

    def step(self, x: Inputs) -> list[torch.Tensor]:
        for cache in self.rows:
            cache.reserve(cache.cached + 1)
        segments = [self.module.Segment(c, c.cached, 1, i) for i, c in enumerate(self.rows)]
        batch = self.module.Packed(segments, LAYERS)
        outs = [
            self.module.ragged_attention(
                LAYER_MODULES[i],
                x.query[i],
                x.key[i],
                x.value[i],
                None,
                **{self.module.BATCH_KWARG: batch},
            )[0]
            for i in range(LAYERS)
        ]
        for cache in self.rows:
            cache.cached += 1
        return outs


def _mask(lengths: torch.Tensor, columns: int) -> torch.Tensor:
    """``[B, 1, 1, columns]`` additive key mask: 0 on each row's columns, -inf past them."""
    past = torch.arange(columns) >= lengths[:, None]
    mask = torch.zeros(past.shape, dtype=DTYPE).masked_fill(past, float("-inf"))
    return mask[:, None, None, :]


class GatheredMode(RowsMode):
    """Per-row caches written per row, gathered into one padded tensor, one SDPA call."""

    def __init__(self, lengths: list[int], seed: int):
        super().__init__(ragged, lengths, seed)

    def step(self, x: Inputs) -> list[torch.Tensor]:
        for cache in self.rows:
            cache.reserve(cache.cached + 1)
        ends = [c.cached + 1 for c in self.rows]
        longest = max(ends)
        mask = _mask(torch.tensor(ends), longest)
        outs = []
        for i in range(LAYERS):
            gathered = torch.zeros(2, len(self.rows), KV_HEADS, longest, DIM, dtype=DTYPE)
            for r, cache in enumerate(self.rows):
                pair = cache.pair(i)
                pair[:, :, cache.cached] = torch.stack((x.key[i][0, :, r], x.value[i][0, :, r]))
                gathered[:, r, :, : ends[r]] = pair[:, :, : ends[r]]
            out = F.scaled_dot_product_attention(
                x.query[i][0].unsqueeze(2).transpose(0, 1),
                gathered[0],
                gathered[1],
                attn_mask=mask,
                enable_gqa=True,
            )
            outs.append(out.squeeze(2).unsqueeze(0))  # [1, B, heads, dim]
        for cache in self.rows:
            cache.cached += 1
        return outs


class PooledMode:
    """All rows in one ``[2, B, kv_heads, capacity, dim]`` tensor per layer, padded."""

    def __init__(self, lengths: list[int], seed: int, steps: int):
        generator = torch.Generator().manual_seed(seed)
        self.lengths = torch.tensor(lengths)
        capacity = max(lengths) + steps + ragged.HEADROOM
        self.pools = [
            torch.randn(2, len(lengths), KV_HEADS, capacity, DIM, generator=generator).to(DTYPE)
            for _ in range(LAYERS)
        ]

    def step(self, x: Inputs) -> list[torch.Tensor]:
        rows = torch.arange(len(self.lengths))
        ends = self.lengths + 1
        longest = int(ends.max())
        mask = _mask(ends, longest)
        outs = []
        for i, pool in enumerate(self.pools):
            # Indexed dims (rows, columns) come first: [B, 2, kv_heads, dim].
            pool[:, rows, :, self.lengths] = torch.stack((x.key[i][0], x.value[i][0]), 1).transpose(
                0, 2
            )
            out = F.scaled_dot_product_attention(
                x.query[i][0].unsqueeze(2).transpose(0, 1),
                pool[0, :, :, :longest],
                pool[1, :, :, :longest],
                attn_mask=mask,
                enable_gqa=True,
            )
            outs.append(out.squeeze(2).unsqueeze(0))
        self.lengths = ends
        return outs


def check_equal(batch: int, seed: int, modes: dict[str, Any]) -> None:
    """Every mode's outputs for one step equal ``ships``' (same caches, same inputs)."""
    rows = lengths(batch, seed)
    x = inputs(batch, seed)
    made = {name: make(rows) for name, make in modes.items()}
    # The pooled mode draws its own cache contents: give it the per-row caches' columns.
    reference = made["ships"]
    if "one call, pooled" in made:
        pooled = made["one call, pooled"]
        for i, pool in enumerate(pooled.pools):
            for r, cache in enumerate(reference.rows):
                pool[:, r, :, : cache.cached] = cache.pair(i)[:, :, : cache.cached]
    for mode in made.values():
        if isinstance(mode, RowsMode):
            for mine, theirs in zip(mode.rows, reference.rows, strict=True):
                mine.store[:, :, :, : mine.cached] = theirs.store[:, :, :, : theirs.cached]
    expected = reference.step(x)
    for name, mode in made.items():
        if name == "ships":
            continue
        for got, want in zip(mode.step(x), expected, strict=True):
            torch.testing.assert_close(got, want, rtol=0.02, atol=0.02, msg=name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--baseline", help="also time ragged_attention of this git revision")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=4, help="ABBA: a multiple of 2")
    parser.add_argument("--seed", type=int, default=18)
    parser.add_argument("--output", type=Path, default=RESULTS)
    add_table_option(parser)
    args = parser.parse_args()
    if printed_table(args, table):
        return
    torch.set_num_threads(1)
    meta = machine()
    modes: dict[str, Any] = {"ships": lambda rows: RowsMode(ragged, rows, args.seed)}
    if args.baseline:
        old = baseline_ragged(args.baseline)
        if old is None:
            parser.error(f"{args.baseline} has no decoding/aux/ragged.py")
        modes[f"per-row {args.baseline}"] = lambda rows: RowsMode(old, rows, args.seed)
    modes["one call, gathered"] = lambda rows: GatheredMode(rows, args.seed)
    modes["one call, pooled"] = lambda rows: PooledMode(rows, args.seed, args.steps + 1)
    for batch in args.batch:
        check_equal(batch, args.seed, modes)
    wall: dict[tuple[int, str, int], list[float]] = {}

    def step_times(make: Any, batch: int, repeat: int) -> list[float]:
        mode = make(lengths(batch, args.seed))
        x = inputs(batch, args.seed)
        mode.step(x)  # warm-up
        cpu, elapsed = [], []
        for _ in range(args.steps):
            started, started_wall = time.thread_time(), time.perf_counter()
            mode.step(x)
            cpu.append((time.thread_time() - started) * 1e3)
            elapsed.append((time.perf_counter() - started_wall) * 1e3)
        name = next(n for n, m in modes.items() if m is make)
        wall[(batch, name, repeat)] = elapsed
        return cpu

    records, summary = time_abba(modes, args.batch, args.repeats, step_times)
    for record in records:
        record["wall_ms"] = wall[(record["batch"], record["mode"], record["repeat"])]
    for row in summary:
        row["wall_median_ms"] = statistics.median(
            t
            for r in records
            if (r["batch"], r["mode"]) == (row["batch"], row["mode"])
            for t in r["wall_ms"]
        )
        print(json.dumps(row), flush=True)
    result = {
        "torch": torch.__version__,
        "shape": {"layers": LAYERS, "heads": HEADS, "kv_heads": KV_HEADS, "head_dim": DIM},
        "dtype": "bfloat16",
        "threads": 1,
        "steps": args.steps,
        "repeats": args.repeats,
        "seed": args.seed,
        "records": records,
        "summary": summary,
    }
    append_run(args.output, result, meta)
    print(table(read_runs(args.output)[-1]))


def table(run: dict) -> str:
    """Markdown: CPU ms per step (all layers) by rows and mode: median, each repeat's median
    min-max, and each mode over ``ships``."""
    modes = list(dict.fromkeys(r["mode"] for r in run["summary"]))
    batches = sorted({r["batch"] for r in run["summary"]})
    lines = [
        "| rows | " + " | ".join(modes) + " |",
        "|---:|" + "---:|" * len(modes),
    ]
    for batch in batches:
        median = {r["mode"]: r["median_ms"] for r in run["summary"] if r["batch"] == batch}
        cells = []
        for mode in modes:
            repeats = [
                statistics.median(r["ms"])
                for r in run["records"]
                if (r["batch"], r["mode"]) == (batch, mode)
            ]
            ratio = "" if mode == "ships" else f", {median[mode] / median['ships']:.2f}x"
            cells.append(f"{median[mode]:.1f} ms ({min(repeats):.1f}-{max(repeats):.1f}{ratio})")
        lines.append(f"| {batch} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
