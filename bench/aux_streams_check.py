"""Auxiliary forwards on CUDA streams, and the auxiliary memory estimate, on a CUDA host.

NOT YET RUN: written on machines without a GPU. A maintainer runs it on any CUDA host (no vLLM
needed, no download: the models are random)::

    python -m bench.aux_streams_check [--rows 32] [--tokens 512] [--steps 32] [--dtype bfloat16]

It builds two small random Llama models and checks, on ``--device``:

1. **Streams.** Proxy-tuning's code path (``ProxyTuning.prepare`` then ``apply``) steps both
   models for ``--rows`` rows, once with every forward inline on the current stream and once
   with each model on its own CUDA stream (decoding/aux/streams.py ``StreamOverlap``), from
   the same state. The corrected logits must be bitwise identical at every step (a missing
   event or ``record_stream`` shows as a difference or a crash); it reports the milliseconds
   per step of each.
2. **Memory.** The CUDA context's size (device memory in use outside torch's allocator once
   CUDA and cuBLAS are initialised: the context, if nothing else runs on the GPU), against
   the 1 GiB adapters/aux_budget.py reserves; and one model's peak allocated memory over a
   join of ``--rows`` rows of ``--tokens`` tokens and decode steps, against
   adapters/aux_memory.py's estimate.

Prints one JSON object (and writes it to ``--out`` when given); exits 1 if a check fails.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from adapters.aux_budget import CUDA_RESERVE
from adapters.aux_memory import ModelShape, estimate
from decoding.aux.overlap import Inline
from decoding.aux.runner import AuxModelRunner
from decoding.aux.streams import StreamOverlap
from decoding.correction import parse_correction
from decoding.pipeline import Row, TokenStream
from decoding.proxy_tuning import AUX_MODELS_CONTEXT, ProxyTuning

VOCAB = 32_000


def small_llama(seed: int, dtype: torch.dtype, device: torch.device) -> LlamaForCausalLM:
    """A random ~100M-parameter Llama with grouped-query attention (4 query heads per KV head)."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=1024,
        intermediate_size=2816,
        num_hidden_layers=8,
        num_attention_heads=16,
        num_key_value_heads=4,
        head_dim=64,
        max_position_embeddings=4096,
        initializer_range=0.2,  # spread logits: greedy choices far from ties
    )
    return LlamaForCausalLM(config).to(device=device, dtype=dtype).eval()


def context_bytes(device: torch.device) -> int:
    """Device memory in use outside torch's allocator, after CUDA and cuBLAS are initialised."""
    x = torch.ones(64, 64, device=device)
    torch.mm(x, x)  # creates the cuBLAS handle and workspace
    torch.cuda.synchronize(device)
    free, total = torch.cuda.mem_get_info(device)
    return total - free - torch.cuda.memory_reserved(device)


def check_streams(models, args, device) -> dict:
    names = list(models)
    correction = parse_correction(
        {"proxy_tuning": {"expert": names[0], "anti_expert": names[1], "alpha": 0.5}},
        context={AUX_MODELS_CONTEXT: set(names)},
    )
    plugins = {
        kind: ProxyTuning(
            {
                n: AuxModelRunner(n, device=device, dtype=args.torch_dtype, model=m)
                for n, m in models.items()
            },
            lanes,
        )
        for kind, lanes in (("inline", Inline()), ("streams", StreamOverlap(device)))
    }
    generator = torch.Generator().manual_seed(0)
    prompt = args.tokens // 2
    streams = {
        uid: torch.randint(0, VOCAB, (prompt,), generator=generator).tolist()
        for uid in range(args.rows)
    }
    seconds = {kind: [] for kind in plugins}
    mismatches, largest = 0, 0.0
    for step in range(args.steps):
        rows = [
            Row(uid, correction, TokenStream(s[:prompt], s[prompt:])) for uid, s in streams.items()
        ]
        base = torch.randn(len(rows), VOCAB, generator=generator).to(device)
        out = {}
        for kind, plugin in plugins.items():
            torch.cuda.synchronize(device)
            start = time.perf_counter()
            plugin.prepare(rows)
            out[kind] = plugin.apply(base.clone(), rows)
            torch.cuda.synchronize(device)
            if step > 0:  # the first step prefills: timed apart from decoding
                seconds[kind].append(time.perf_counter() - start)
        if not torch.equal(out["inline"], out["streams"]):
            mismatches += 1
            largest = max(largest, float((out["inline"] - out["streams"]).abs().max()))
        tokens = out["inline"].argmax(-1).tolist()
        for s, token in zip(streams.values(), tokens, strict=True):
            s.append(token)
    ms = {kind: 1000 * sum(v) / max(len(v), 1) for kind, v in seconds.items()}
    return {
        "steps": args.steps,
        "rows": args.rows,
        "identical": mismatches == 0,
        "mismatched_steps": mismatches,
        "largest_difference": largest,
        "ms_per_decode_step_inline": round(ms["inline"], 3),
        "ms_per_decode_step_streams": round(ms["streams"], 3),
        "speedup": round(ms["inline"] / ms["streams"], 3) if ms["streams"] else None,
    }


def check_memory(model: LlamaForCausalLM, args, device) -> dict:
    dtype = str(args.torch_dtype).removeprefix("torch.")
    parameters = sum(p.numel() for p in model.parameters())
    shape = ModelShape.of(model.config, parameters)
    runner = AuxModelRunner("memory", device=device, dtype=args.torch_dtype, model=model)
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)  # the weights (and the other model's)
    torch.cuda.reset_peak_memory_stats(device)
    generator = torch.Generator().manual_seed(1)
    length = args.tokens - args.steps
    streams = {
        uid: torch.randint(0, VOCAB, (length,), generator=generator).tolist()
        for uid in range(args.rows)
    }
    for _ in range(args.steps):
        logits = runner.step({uid: TokenStream(s[:1], s[1:]) for uid, s in streams.items()})
        for s, token in zip(streams.values(), logits.argmax(-1).tolist(), strict=True):
            s.append(token)
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) - before
    reserved = torch.cuda.max_memory_reserved(device)
    footprint = estimate(shape, dtype, args.rows, args.tokens)
    bound = footprint.layout + footprint.transient + footprint.workspace
    return {
        "weights_bytes": parameters * torch.finfo(args.torch_dtype).bits // 8,
        "weights_estimate": footprint.weights,
        "peak_above_weights": peak,
        "estimate_above_weights": bound,
        "estimate_covers_peak": peak <= bound,
        "peak_reserved_by_allocator": reserved,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda:0")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--rows", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=512, help="longest row (max_model_len)")
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("aux_streams_check: needs a CUDA device", file=sys.stderr)
        return 2
    args.torch_dtype = getattr(torch, args.dtype)
    device = torch.device(args.device)
    context = context_bytes(device)
    models = {name: small_llama(seed, args.torch_dtype, device) for seed, name in enumerate("ab")}
    result = {
        "device": torch.cuda.get_device_name(device),
        "torch": torch.__version__,
        "dtype": args.dtype,
        "cuda_context_bytes": context,
        "cuda_reserve_bytes": CUDA_RESERVE,
        "context_within_reserve": context <= CUDA_RESERVE,
        "streams": check_streams(models, args, device),
        "memory": check_memory(models["a"], args, device),
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")
    ok = result["streams"]["identical"] and result["memory"]["estimate_covers_peak"]
    return 0 if ok and result["context_within_reserve"] else 1


if __name__ == "__main__":
    sys.exit(main())
