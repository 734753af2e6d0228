"""The tiny deployment that the proxy-tuning, copilot and tensor-parallel modules share (one
set of models, one copilot training, one server for the first two: each engine start costs
about a minute of CI).

A random 2-layer Llama ``base`` (2 attention heads, so tensor parallelism 2 splits them), an
``expert`` and an ``anti`` expert of the same shape and tokenizer, and a copilot ``fix`` that
``corrigo copilot train`` trains on ``base``'s mistakes (the CLI, as an operator runs it).
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from openai import OpenAI
from transformers import AutoModelForCausalLM

from adapters.default_model import ensure_default_model
from decoding.copilot.checkpoint import read

from ..support import REPO, TEST_ENGINE, make_tiny_llama

#: Optimiser steps of the copilot's training run.
TRAIN_STEPS = 20
#: The models, by name; the base is served, the others are auxiliary models.
NAMES = ("base", "expert", "anti")
#: Their engine: small context, exact float32, a KV cache (per rank) sized for them.
ENGINE = {
    **TEST_ENGINE,
    "max_model_len": 256,
    "dtype": "float32",
    "kv_cache_memory_bytes": 64 << 20,
}


#: The chat template file the tiny server's ``anti_file`` auxiliary model declares (unlike the
#: served model's SmolLM2 template; tests/integration/test_proxy_tuning_exact.py).
AUX_TEMPLATE = (
    "{% for m in messages %}<{{ m['role'] }}> {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)


@dataclass(frozen=True)
class TinyDeployment:
    folder: Path
    #: ``NAMES`` -> HF folder.
    paths: dict[str, Path]
    #: The copilot's checkpoint folder (bound to ``base``).
    copilot: Path
    #: The ``corrigo copilot train`` run that wrote it.
    training: subprocess.CompletedProcess


def train_copilot(pilot: Path, data: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "server.cli", "copilot", "train", "--pilot", str(pilot)]
    command += ["--data", str(data), "--out", str(out), "--max-steps", str(TRAIN_STEPS)]
    command += ["--epochs", "100", "--hidden-size", "64", "--layers", "1", "--top-k", "8"]
    command += ["--lr", "3e-3", "--batch-size", "4", *extra]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)


def build(folder: Path) -> TinyDeployment:
    tokenizer = ensure_default_model()
    paths = {
        name: make_tiny_llama(folder / name, tokenizer, seed=seed, initializer_range=0.2)
        for seed, name in enumerate(NAMES)
    }
    data = folder / "data.jsonl"
    data.write_text(
        "".join(
            json.dumps({"prompt": f"Add {i} and {i}.", "response": f"It is {2 * i}."}) + "\n"
            for i in range(12)
        )
    )
    training = train_copilot(paths["base"], data, folder / "fix", "--space", "probs")
    assert training.returncode == 0, training.stderr[-3000:]
    return TinyDeployment(folder, paths, folder / "fix", training)


def load(deployment: TinyDeployment) -> tuple[dict[str, torch.nn.Module], torch.nn.Module]:
    """The transformers copies the references step, and the copilot's model."""
    models = {
        name: AutoModelForCausalLM.from_pretrained(str(p), dtype=torch.float32).eval()
        for name, p in deployment.paths.items()
    }
    return models, read(deployment.copilot).load_model()


def completion(client: OpenAI, prompt, steps: int, correction=None, *, stream=False, n=1):
    """Generated token ids per choice, and the response's correction report."""
    extra = {"ignore_eos": True, "return_token_ids": True}
    if correction is not None:
        extra["correction"] = correction
    if n > 1:  # vLLM refuses n > 1 at temperature 0; top-1 sampling is argmax
        extra["top_k"] = 1
    kwargs = dict(
        model="base",
        prompt=prompt,
        max_tokens=steps,
        temperature=0 if n == 1 else 1.0,
        n=n,
        extra_body=extra,
    )
    if not stream:
        r = client.completions.create(**kwargs)
        ids = [c.model_extra["token_ids"] for c in sorted(r.choices, key=lambda c: c.index)]
        return ids, r.model_extra.get("correction")
    ids, report = {}, None
    for chunk in client.completions.create(stream=True, **kwargs):
        report = chunk.model_extra.get("correction") or report
        for c in chunk.choices:
            ids.setdefault(c.index, []).extend(c.model_extra.get("token_ids") or [])
    return [ids[i] for i in sorted(ids)], report
