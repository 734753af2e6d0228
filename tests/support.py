"""Helpers the tests share: a live corrigo server in its own process group, tiny models."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent

#: Engine settings for tests: eager (no compile: ~40 s start instead of ~110 s), short context,
#: and a fixed KV cache: the CPU engine otherwise sizes it from the share of host memory left
#: beside its own resident size, which on a busy machine can come out too small to start.
TEST_ENGINE = {"enforce_eager": True, "max_model_len": 2048, "kv_cache_memory_bytes": 2 << 30}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(value)


def write_config(path: Path, sections: dict[str, dict]) -> Path:
    lines = []
    for name, values in sections.items():
        lines.append(f"[{name}]")
        lines += [f"{k} = {toml_value(v)}" for k, v in values.items()]
        lines.append("")
    path.write_text("\n".join(lines))
    return path


@dataclass
class LiveServer:
    """A ``corrigo serve`` subprocess, started in its own session (process group)."""

    process: subprocess.Popen
    base_url: str
    log_path: Path
    #: Responses captured while the engine was still starting (for the 503 tests).
    during_startup: dict[str, httpx.Response] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> None:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout)
        # Whatever is left of the group (there should be nothing) goes too.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(10)


def start_server(
    config: Path,
    log_path: Path,
    *,
    probe_during_startup: dict[str, str] | None = None,
    ready_timeout: float = 900,
    env: dict[str, str] | None = None,
) -> LiveServer:
    """Start ``corrigo serve --config config`` and wait until /ready answers 200.

    ``probe_during_startup`` maps names to paths fetched (with the key header, if any) as soon
    as /health answers, while the engine is still starting.
    """
    port = free_port()
    log = log_path.open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "server.cli", "serve", "--config", str(config), "--port", str(port)],
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env={**os.environ, **(env or {})},
    )
    server = LiveServer(process, f"http://127.0.0.1:{port}", log_path)
    deadline = time.monotonic() + ready_timeout
    try:
        with httpx.Client(base_url=server.base_url, timeout=10) as client:
            _wait_for(client, "/health", server, deadline)
            for name, path in (probe_during_startup or {}).items():
                server.during_startup[name] = client.get(path, headers=_auth_header(config))
            _wait_for(client, "/ready", server, deadline)
    except BaseException:
        server.stop(signal.SIGKILL)
        raise
    return server


def _auth_header(config: Path) -> dict[str, str]:
    import tomllib

    keys = tomllib.loads(config.read_text()).get("auth", {}).get("api_keys", [])
    return {"Authorization": f"Bearer {keys[0]}"} if keys else {}


def _wait_for(client: httpx.Client, path: str, server: LiveServer, deadline: float) -> None:
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(
                f"corrigo exited with {server.process.returncode}:\n{server.log()[-5000:]}"
            )
        with contextlib.suppress(httpx.HTTPError):
            if client.get(path).status_code == 200:
                return
        time.sleep(0.25)
    raise TimeoutError(f"{path} did not answer 200 in time:\n{server.log()[-5000:]}")


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
