"""The copilot's cost per engine step in isolation: the correction pipeline's ``apply`` for B
rows that all ask for the copilot (the copilot plugin: the pilot's log-softmax and top-k, the
copilot's batched forward, the fusion and the report's figures; then the pipeline's
re-applied engine masks), against the same pipeline of another revision (``--baseline``: its
pipeline, plugin, copilot network and runners).

The copilot has the shape ``corrigo copilot train`` gives it (adapters/copilot_training.py
``TrainSettings``: hidden 128, 2 layers, top-32) beside the embedded SmolLM2-135M's vocabulary,
with a random head (a step's cost does not depend on the weights). Rows: prompts of uniform
16-512 random tokens (fixed seed), prefilled once, then ``--steps`` decode steps with random
pilot logits. Modes alternate ABBA within each repeat (current, baseline, baseline, current,
...) on one torch thread, as in vLLM's CPU worker.

    .venv/bin/python -m bench.copilot_step --batch 1 8 32 --baseline d032322

``--cold MB`` adds a cold twin of each mode ("current, cold caches", and the baseline's): the
same step after streaming ``MB`` megabytes through the CPU's caches before each step, as the
pilot's forward does in serving (SmolLM2-135M's weights are about 270 MB in bf16), so that the
step reads its weights and tables from memory.

``--head`` adds a mode "head alone" (with its cold twin under ``--cold``): the copilot's output
head by itself, ``W h`` for B rows of random ``h``, as the step computes it (bf16, its weight
packed for oneDNN: decoding/aux/packed.py). Reading that ``vocab x hidden`` weight is the part
of the step no implementation of the rest can avoid.

Results (every step's ms, and per mode and batch the median) are appended as a run to
docs/bench/copilot-step.json.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoConfig

from adapters.copilot_training import TrainSettings, copilot_config
from adapters.engine import resolve_model
from bench.revisions import module_at, time_abba
from decoding import pipeline as pipeline_module
from decoding.copilot import checkpoint
from decoding.copilot import plugin as plugin_module
from decoding.copilot import runner as runner_module
from decoding.copilot.binding import Binding
from decoding.copilot.model import Copilot
from decoding.copilot.params import COPILOTS_CONTEXT
from decoding.correction import parse_correction
from evals.results import append_run, arguments, machine

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "docs" / "bench" / "copilot-step.json"
VOCAB_LOW = 1000
#: What ``--cold`` adds to a mode's name.
COLD = ", cold caches"
#: The ``--head`` mode's name, and what its mode holds in place of a revision's modules.
HEAD = "head alone"


def baseline_modules(rev: str):
    """(pipeline, copilot plugin, copilot runner) modules of revision ``rev``: the plugin's
    pilot features, and the copilot network the runner loads, from that revision's model.py;
    the runner's auxiliary runner (decoding/aux/runner.py) from that revision too."""
    pipeline = module_at(rev, "decoding/pipeline.py", "decoding._baseline_pipeline", {})
    module_at(rev, "decoding/copilot/model.py", "decoding.copilot._baseline_model", {})
    plugin = module_at(
        rev,
        "decoding/copilot/plugin.py",
        "decoding.copilot._baseline_plugin",
        {"from .model import": "from ._baseline_model import"},
    )
    module_at(
        rev,
        "decoding/copilot/checkpoint.py",
        "decoding.copilot._baseline_checkpoint",
        {"from .model import": "from ._baseline_model import"},
    )
    module_at(rev, "decoding/aux/runner.py", "decoding.aux._baseline_runner", {})
    runner = module_at(
        rev,
        "decoding/copilot/runner.py",
        "decoding.copilot._baseline_copilot_runner",
        {
            "from decoding.copilot.checkpoint import": (
                "from decoding.copilot._baseline_checkpoint import"
            ),
            "from ..aux.runner import": "from ..aux._baseline_runner import",
        },
    )
    return pipeline, plugin, runner


def make_copilot(folder: Path, pilot: str) -> Path:
    config = AutoConfig.from_pretrained(pilot)
    torch.manual_seed(0)
    model = Copilot(copilot_config(config, TrainSettings()), TrainSettings().top_k)
    torch.nn.init.normal_(model.head.weight, std=0.02)
    checkpoint.save(folder, model, Binding("bench", "v", "c"))
    return folder


def step_times(
    modules, path: Path, dtype, batch: int, steps: int, seed: int, flush: torch.Tensor | None
) -> list[float]:
    """ms per step of ``modules`` = (pipeline, plugin, copilot runner) for ``batch`` copilot
    rows; with ``flush``, each step after a pass over it (untimed)."""
    pipeline_mod, plugin_mod, runner_mod = modules
    runner = runner_mod.CopilotRunner(str(path), dtype=dtype)
    plugin = plugin_mod.CopilotRectification({"c": runner}, observe=lambda r, a, b: None)
    pipeline = pipeline_mod.CorrectionPipeline({"copilot": plugin})
    spec = parse_correction({"copilot": {"name": "c"}}, context={COPILOTS_CONTEXT: {"c"}})
    rng = random.Random(seed)
    vocab = runner.runner.vocab_size
    outputs = []
    for row in range(batch):
        prompt = [rng.randrange(VOCAB_LOW, vocab) for _ in range(rng.randint(16, 512))]
        outputs.append([])
        pipeline.add(row, spec, prompt, outputs[-1], stop=0)
    gen = torch.Generator().manual_seed(seed)
    times = []
    for step in range(steps + 1):
        logits = torch.randn(batch, vocab, generator=gen) * 3
        if flush is not None:
            flush.add_(1)
        started = time.perf_counter()
        pipeline.apply(logits)
        if step:  # the first step prefills every row
            times.append((time.perf_counter() - started) * 1e3)
        for output in outputs:
            output.append(rng.randrange(VOCAB_LOW, vocab))
    return times


def head_times(
    path: Path, dtype, batch: int, steps: int, seed: int, flush: torch.Tensor | None
) -> list[float]:
    """ms per product of the copilot's output head alone for ``batch`` rows (as
    :func:`step_times`, with ``flush`` before each)."""
    head = runner_module.CopilotRunner(str(path), dtype=dtype).runner.model.head
    hidden = torch.randn(batch, head.in_features, generator=torch.Generator().manual_seed(seed))
    hidden = hidden.to(dtype)
    times = []
    with torch.inference_mode():
        for step in range(steps + 1):
            if flush is not None:
                flush.add_(1)
            started = time.perf_counter()
            head(hidden)
            if step:  # as step_times: the first call is not timed
                times.append((time.perf_counter() - started) * 1e3)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument(
        "--baseline", help="git revision whose pipeline, plugin, copilot and runners to compare"
    )
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=2, help="ABBA pairs per batch")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--cold", type=int, metavar="MB", help="also after MB streamed (above)")
    parser.add_argument("--head", action="store_true", help="also the output head alone")
    args = parser.parse_args()
    torch.set_num_threads(1)
    dtype = getattr(torch, args.dtype)
    modes = {"current": ((pipeline_module, plugin_module, runner_module), None)}
    if args.baseline:
        modes[f"baseline {args.baseline}"] = (baseline_modules(args.baseline), None)
    if args.head:
        modes[HEAD] = (HEAD, None)
    if args.cold:
        flush = torch.zeros(args.cold * 2**20 // 4)
        modes |= {f"{name}{COLD}": (mode[0], flush) for name, mode in modes.items()}
    before = machine()
    with tempfile.TemporaryDirectory() as tmp:
        path = make_copilot(Path(tmp) / "copilot", resolve_model(None, None).path)
        records, summary = time_abba(
            modes,
            args.batch,
            args.repeats,
            lambda mode, batch, repeat: (
                head_times(path, dtype, batch, args.steps, repeat, mode[1])
                if mode[0] == HEAD
                else step_times(mode[0], path, dtype, batch, args.steps, repeat, mode[1])
            ),
        )
    append_run(
        args.output,
        {
            "args": arguments(args),
            "records": records,
            "summary": summary,
        },
        before,
    )
    for row in summary:
        print(row)


if __name__ == "__main__":
    main()
