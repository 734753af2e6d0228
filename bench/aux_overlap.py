"""A proxy-tuned step's three forwards without vLLM: do the auxiliary forwards overlap the
engine's?

Per step, as the logits processor does (decoding/proxy_tuning/plugin.py): the two auxiliary
models' forwards are submitted to their lanes (decoding/aux/streams.py ``ThreadOverlap``), then
this thread, bound to one core as vLLM's CPU worker binds its thread, runs the "engine"
forward (the same model's runner), then takes the two results. Modes:

- ``threads``: the auxiliary models in this process, their forwards on the lane threads (how
  proxy-tuning ran on the CPU before decoding/aux/remote.py);
- ``workers``: each auxiliary model in a worker process (decoding/aux/remote.py, as it ships);
- ``engine``: the engine forward alone (no auxiliary forwards), the step of a plain row.

SmolLM2-135M for all three (the equal set-up of bench/traffic.py), one torch thread, rows with
prompts of uniform 16-512 tokens (fixed seed), prefilled once, then ``--steps`` decode steps
timed (wall ms per step), modes interleaved ABBA over ``--repeats`` (bench/revisions.py
``time_abba``: every repeat's times, and each mode's median over all of them; runs 0 and 1 of
docs/bench/aux-overlap.json hold each repeat's median instead). With the three
forwards fully serialised a step costs about 3x ``engine``; fully overlapped on two free cores
about 1.5x.

    .venv/bin/python -m bench.aux_overlap --batch 1 8 --steps 12 --repeats 4

Results are appended to ``--output`` (evals/results.py: commit, CPU flags, load average).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import time
from pathlib import Path

import torch

from adapters.default_model import ensure_default_model
from bench.revisions import time_abba
from decoding.aux.remote import RemoteRunner
from decoding.aux.runner import AuxModelRunner
from decoding.aux.streams import ThreadOverlap
from decoding.pipeline import TokenStream
from evals.results import append_run, machine

MODES = ("threads", "workers", "engine")


def _rows(batch: int, seed: int) -> dict[int, TokenStream]:
    rng = random.Random(seed)
    return {
        key: TokenStream([rng.randrange(1000, 40000) for _ in range(rng.randint(16, 512))], ())
        for key in range(batch)
    }


def _grown(streams: dict[int, TokenStream], token: int) -> dict[int, TokenStream]:
    return {k: TokenStream(s.prompt, (*s.output, token)) for k, s in streams.items()}


def time_steps(engine, aux: dict, lanes: ThreadOverlap, batch: int, steps: int) -> list[float]:
    """Wall seconds of each of ``steps`` decode steps, after one prefill step (not timed)."""
    streams = _rows(batch, seed=batch)
    times = []
    for step in range(steps + 1):
        started = time.perf_counter()
        pending = [lanes.submit(name, model.step, streams) for name, model in aux.items()]
        engine.step(streams)
        for p in pending:
            p.result()
        if step:
            times.append(time.perf_counter() - started)
        streams = _grown(streams, 7 + step)
    for key in streams:  # every runner forgets the rows: the next call prefills anew
        for runner in (engine, *aux.values()):
            runner.release(key)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    meta = machine()
    with contextlib.suppress(AttributeError, OSError):
        os.sched_setaffinity(0, {0})  # this thread only, as vLLM binds its CPU worker's
    path = str(ensure_default_model())
    dtype = getattr(torch, args.dtype)
    engine = AuxModelRunner(path, dtype=dtype)
    workers = {n: RemoteRunner(path, dtype=dtype) for n in ("expert", "anti")}
    aux = {
        "threads": {n: AuxModelRunner(path, dtype=dtype) for n in ("expert", "anti")},
        "workers": {n: w.ready() for n, w in workers.items()},
        "engine": {},
    }
    # Each mode's auxiliary models with lanes of their own.
    modes = {mode: (aux[mode], ThreadOverlap()) for mode in MODES}

    def step_ms(mode: tuple[dict, ThreadOverlap], batch: int, _repeat: int) -> list[float]:
        models, lanes = mode
        return [t * 1e3 for t in time_steps(engine, models, lanes, batch, args.steps)]

    records, summary = time_abba(modes, args.batch, args.repeats, step_ms)
    for worker in workers.values():
        worker.close()
    result = {
        "model": "SmolLM2-135M (embedded), three times",
        "dtype": args.dtype,
        "steps": args.steps,
        "repeats": args.repeats,
        "records": records,
        "summary": summary,
    }
    append_run(args.output, result, meta)


if __name__ == "__main__":
    main()
