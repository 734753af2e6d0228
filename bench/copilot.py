"""The copilot's per-token overhead in serving against its FLOP share (issue 18, target 4).

One ``corrigo serve`` of the embedded SmolLM2-135M (the pilot) with one copilot of the shape
``corrigo copilot train`` gives it (adapters/copilot_training.py ``TrainSettings``: hidden
128, 2 layers, top-32; a random head: a step's cost does not depend on the weights), bound to
the pilot. The same requests (bench/traffic.py's: prompts of uniform 16-512 random tokens,
outputs of uniform 8-256, greedy, ``ignore_eos``, streamed ``/v1/completions``, arriving at
once, at most ``c`` in flight) run *plain* and with ``correction.copilot`` on every request
(*copilot*), in ABBA order (plain, copilot, copilot, plain, ...), ``--pairs`` pairs per
concurrency.

Per pair, the per-token overhead is ``plain tok/s / copilot tok/s - 1``; the FLOP share is
``F_copilot / F_pilot``, ``F`` = 2 x the weights of a model's linear layers (its
matmuls per token, the output head's included, embedding lookups and attention's
length-dependent FLOPs left out). Every token, prompt and output, runs through both models, so
the share is the same for any mix of lengths. Target: overhead <= 1.5 x share.

    flock /tmp/corrigo-engine.lock .venv/bin/python -m bench.copilot --concurrency 1 8 --pairs 5

Results (every pair, the medians, the load before and after each run) are appended as a run
to docs/bench/copilot.json.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import httpx
import torch
import uvloop
from prometheus_client.parser import text_string_to_metric_families
from transformers import AutoConfig, AutoModelForCausalLM

from adapters.copilot_training import TrainSettings, copilot_config
from adapters.engine import resolve_model
from bench import traffic
from decoding.copilot import checkpoint
from decoding.copilot.binding import Binding
from decoding.copilot.model import Copilot
from decoding.copilot.runner import pilot_identity
from evals.results import append_run, arguments, load_average, machine
from server.launcher import start_server
from server.toml_writer import write_config

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "docs" / "bench" / "copilot.json"
CORRECTION = {"copilot": {"name": "bench"}}
#: Overhead allowed per unit of FLOP share (issue 18).
TARGET = 1.5


def linear_flops(model: torch.nn.Module) -> int:
    """2 x the weights of ``model``'s linear layers (a tied head counted: it is a matmul)."""
    return 2 * sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))


def make_copilot(folder: Path, pilot: str) -> Copilot:
    """A copilot of the trained shape, bound to ``pilot``, saved at ``folder``."""
    config = AutoConfig.from_pretrained(pilot)
    torch.manual_seed(0)
    model = Copilot(copilot_config(config, TrainSettings()), TrainSettings().top_k)
    torch.nn.init.normal_(model.head.weight, std=0.02)
    vocab, pilot_config, weights = pilot_identity(pilot)
    checkpoint.save(folder, model, Binding.of(pilot, vocab, pilot_config, weights=weights))
    return model


def plugin_seconds(base_url: str) -> tuple[float, float]:
    """Seconds and steps the copilot plugin has taken so far (``corrigo_plugin_step_seconds``:
    its time inside the engine's step, measured in the engine process)."""
    totals = {"_sum": 0.0, "_count": 0.0}
    for family in text_string_to_metric_families(httpx.get(f"{base_url}/metrics").text):
        for sample in family.samples:
            suffix = sample.name.removeprefix("corrigo_plugin_step_seconds")
            if suffix in totals and sample.labels.get("plugin") == "copilot":
                totals[suffix] = sample.value
    return totals["_sum"], totals["_count"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument(
        "--requests",
        type=lambda s: dict(tuple(map(int, kv.split(":"))) for kv in s.split(",")),
        default={1: 2, 8: 8, 32: 32},
        help="requests per run by concurrency, e.g. 1:2,8:8 (default c)",
    )
    parser.add_argument("--pairs", type=int, default=5, help="ABBA: plain/copilot pairs")
    parser.add_argument("--seed", type=int, default=18)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    model = resolve_model(None, None)
    meta = machine()
    records: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        copilot = make_copilot(work / "copilot", model.path)
        flops = {
            "pilot": linear_flops(AutoModelForCausalLM.from_pretrained(model.path)),
            "copilot": linear_flops(copilot),
        }
        share = flops["copilot"] / flops["pilot"]
        config = write_config(
            work / "copilot.toml",
            {
                **traffic.server_sections(model, max(args.concurrency)),
                "copilots.bench": {"path": str(work / "copilot")},
            },
        )
        server = start_server(config, work / "server.log", cwd=REPO)
        try:
            warm = traffic.requests(2, 100.0, 0, 40000, corrected_share=1.0)
            uvloop.run(traffic.run(server.base_url, model.model_id, warm, True, 2, CORRECTION))
            for cap in args.concurrency:
                count = args.requests.get(cap, cap)
                reqs = traffic.requests(count, 1000.0, args.seed + cap, 40000, corrected_share=1.0)
                order = ["plain", "copilot"]
                for pair in range(args.pairs):
                    for workload in order if pair % 2 == 0 else order[::-1]:
                        before = load_average()
                        seconds, steps = plugin_seconds(server.base_url)
                        result = uvloop.run(
                            traffic.run(
                                server.base_url,
                                model.model_id,
                                reqs,
                                workload == "copilot",
                                cap,
                                CORRECTION,
                            )
                        )
                        seconds_after, steps_after = plugin_seconds(server.base_url)
                        steps_run = steps_after - steps
                        record = {
                            "concurrency": cap,
                            "workload": workload,
                            "pair": pair,
                            "requests": count,
                            "load_before": before,
                            "load_after": load_average(),
                            **result,
                            "copilot_steps": steps_run,
                            "copilot_ms_per_step": (
                                1e3 * (seconds_after - seconds) / steps_run if steps_run else 0.0
                            ),
                        }
                        records.append(record)
                        print(
                            cap,
                            workload,
                            pair,
                            result["output_tok_s"],
                            record["copilot_ms_per_step"],
                        )
        finally:
            server.stop()
    summary = []
    for cap in args.concurrency:
        pairs = []
        for pair in range(args.pairs):
            tok = {
                r["workload"]: r["output_tok_s"]
                for r in records
                if r["concurrency"] == cap and r["pair"] == pair
            }
            pairs.append(tok["plain"] / tok["copilot"] - 1)
        overhead = statistics.median(pairs)
        plugin_ms = [
            r["copilot_ms_per_step"]
            for r in records
            if r["concurrency"] == cap and r["workload"] == "copilot"
        ]
        summary.append(
            {
                "concurrency": cap,
                "copilot_ms_per_step": statistics.median(plugin_ms),
                "overhead_per_pair": pairs,
                "overhead": overhead,
                "flop_share": share,
                "overhead_vs_share": overhead / share,
                "met": overhead <= TARGET * share,
            }
        )
    run = {
        "args": arguments(args),
        "flops_per_token": flops,
        "records": records,
        "summary": summary,
    }
    append_run(args.output, run, meta)
    for row in summary:
        print(row)


if __name__ == "__main__":
    main()
