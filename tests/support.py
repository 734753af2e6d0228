"""Helpers the tests share: a live corrigo server in its own process group, tiny models.

Starting a server and writing its config are the package's own (server/launcher.py,
server/toml_writer.py), shared with evals/ and bench/; the names stay importable from here.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path

from server import launcher
from server.launcher import LiveServer, free_port
from server.toml_writer import toml_value, write_config

REPO = Path(__file__).resolve().parent.parent

TEST_ENGINE = dict(launcher.QUICK_ENGINE)

__all__ = [
    "REPO",
    "TEST_ENGINE",
    "LiveServer",
    "free_port",
    "make_tiny_llama",
    "start_server",
    "tiny_llama_config",
    "toml_value",
    "write_config",
]


def start_server(
    config: Path,
    log_path: Path,
    *,
    probe_during_startup: Mapping[str, str] | None = None,
    ready_timeout: float = 900,
    env: Mapping[str, str] | None = None,
    flags: Sequence[str] = (),
) -> LiveServer:
    """:func:`server.launcher.start_server` from this checkout (its root as the working
    directory, so ``python -m server.cli`` runs the code under test), probing with the config's
    first API key."""
    return launcher.start_server(
        config,
        log_path,
        cwd=REPO,
        env=env,
        ready_timeout=ready_timeout,
        probe_during_startup=probe_during_startup,
        probe_headers=_auth_header(config) if probe_during_startup else None,
        flags=flags,
    )


def _auth_header(config: Path) -> dict[str, str]:
    keys = tomllib.loads(config.read_text()).get("auth", {}).get("api_keys", [])
    return {"Authorization": f"Bearer {keys[0]}"} if keys else {}


def tiny_llama_config(vocab_size: int, **overrides):
    """A 2-layer Llama config small enough for CPU tests (vLLM on CPU needs head_dim >= 32)."""
    from transformers import LlamaConfig

    settings = dict(
        vocab_size=vocab_size,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=64,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
    )
    return LlamaConfig(**{**settings, **overrides})


def make_tiny_llama(
    folder: Path, tokenizer_from: Path, *, seed: int = 0, initializer_range: float = 0.02
) -> Path:
    """A 2-layer random Llama sharing a real tokenizer (vLLM on CPU needs head_dim >= 32).

    A larger ``initializer_range`` spreads the logits, so greedy choices are clear-cut and
    comparisons between engines are not decided by rounding."""
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_from)
    torch.manual_seed(seed)
    config = tiny_llama_config(
        len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        initializer_range=initializer_range,
    )
    LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
