"""The tiny deployment that the proxy-tuning, copilot and tensor-parallel modules share (one
set of models, one copilot training, one server for the first two: each engine start costs
about a minute of CI).

A random 2-layer Llama ``base`` (2 attention heads, so tensor parallelism 2 splits them), an
``expert`` and an ``anti`` expert of the same shape and tokenizer, a copilot ``fix`` that
``corrigo copilot train`` trains on ``base``'s mistakes (the CLI, as an operator runs it), and
a LoRA adapter of ``base`` in PEFT's format, written by hand (:func:`make_lora`).
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
#: The LoRA adapter's rank, scale (PEFT's ``lora_alpha``) and the layers it adapts.
LORA_RANK, LORA_ALPHA = 8, 16
LORA_TARGETS = ("o_proj", "down_proj")
#: The model id the server serves the adapter under.
LORA_MODEL = "base-lora"
#: Their engine: small context, exact float32, a KV cache (per rank) sized for them.
ENGINE = {
    **TEST_ENGINE,
    "max_model_len": 256,
    "dtype": "float32",
    "kv_cache_memory_bytes": 64 << 20,
}


@dataclass(frozen=True)
class TinyDeployment:
    folder: Path
    #: ``NAMES`` -> HF folder.
    paths: dict[str, Path]
    #: The copilot's checkpoint folder (bound to ``base``).
    copilot: Path
    #: The ``corrigo copilot train`` run that wrote it.
    training: subprocess.CompletedProcess
    #: A LoRA adapter of ``base`` (PEFT format).
    lora: Path


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
    lora = make_lora(folder / "lora", paths["base"])
    return TinyDeployment(folder, paths, folder / "fix", training, lora)


def make_lora(folder: Path, base: Path, seed: int = 7, rank: int = LORA_RANK) -> Path:
    """A random LoRA adapter of ``base`` as PEFT saves one (adapter_config.json and
    adapter_model.safetensors; no peft package needed): for each adapted linear layer ``W``
    (out x in), ``lora_A`` (r x in) and ``lora_B`` (out x r), the layer computing
    ``x (W + lora_alpha / r * B A)^T``. Both factors are random (PEFT starts B at 0): the
    adapter must change greedy outputs for the tests to see it."""
    from safetensors.torch import save_file

    config = json.loads((base / "config.json").read_text())
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for layer in range(config["num_hidden_layers"]):
        for name, (fan_out, fan_in) in _lora_shapes(config).items():
            module = "self_attn" if name == "o_proj" else "mlp"
            prefix = f"base_model.model.model.layers.{layer}.{module}.{name}"
            tensors[f"{prefix}.lora_A.weight"] = 0.2 * torch.randn(
                rank, fan_in, generator=generator
            )
            tensors[f"{prefix}.lora_B.weight"] = 0.2 * torch.randn(
                fan_out, rank, generator=generator
            )
    folder.mkdir(parents=True)
    save_file(tensors, folder / "adapter_model.safetensors")
    adapter = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": str(base),
        "r": rank,
        "lora_alpha": LORA_ALPHA,
        "lora_dropout": 0.0,
        "bias": "none",
        "target_modules": list(LORA_TARGETS),
        "fan_in_fan_out": False,
        "modules_to_save": None,
    }
    (folder / "adapter_config.json").write_text(json.dumps(adapter, indent=2))
    return folder


def _lora_shapes(config: dict) -> dict[str, tuple[int, int]]:
    heads = config["num_attention_heads"] * config["head_dim"]
    return {
        "o_proj": (config["hidden_size"], heads),
        "down_proj": (config["hidden_size"], config["intermediate_size"]),
    }


def merge_lora(model: torch.nn.Module, adapter: Path) -> torch.nn.Module:
    """``model`` (a transformers Llama) with the adapter's ``lora_alpha / r * B A`` added to
    each adapted weight, in place."""
    from safetensors.torch import load_file

    settings = json.loads((adapter / "adapter_config.json").read_text())
    scale = settings["lora_alpha"] / settings["r"]
    tensors = load_file(adapter / "adapter_model.safetensors")
    weights = dict(model.named_parameters())
    with torch.no_grad():
        for key, a in tensors.items():
            if not key.endswith(".lora_A.weight"):
                continue
            prefix = key.removesuffix(".lora_A.weight")
            b = tensors[f"{prefix}.lora_B.weight"]
            weight = weights[prefix.removeprefix("base_model.model.") + ".weight"]
            weight += scale * (b @ a).to(weight.dtype)
    return model


def load(deployment: TinyDeployment) -> tuple[dict[str, torch.nn.Module], torch.nn.Module]:
    """The transformers copies the references step, and the copilot's model."""
    models = {
        name: AutoModelForCausalLM.from_pretrained(str(p), dtype=torch.float32).eval()
        for name, p in deployment.paths.items()
    }
    return models, read(deployment.copilot).load_model()


def completion(
    client: OpenAI, prompt, steps: int, correction=None, *, stream=False, n=1, model="base"
):
    """Generated token ids per choice, and the response's correction report."""
    extra = {"ignore_eos": True, "return_token_ids": True}
    if correction is not None:
        extra["correction"] = correction
    if n > 1:  # vLLM refuses n > 1 at temperature 0; top-1 sampling is argmax
        extra["top_k"] = 1
    kwargs = dict(
        model=model,
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
