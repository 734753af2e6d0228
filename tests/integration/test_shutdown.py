"""SIGTERM: the server exits promptly and leaves no process it started behind (the vLLM
engine core runs in a child process that, orphaned, ignores SIGTERM; DESIGN.md section 2)."""

from __future__ import annotations

import signal
import threading
import time

import httpx
import psutil
import pytest

from adapters.default_model import ensure_default_model

from ..support import TEST_ENGINE, make_tiny_llama, start_server, write_config

pytestmark = pytest.mark.engine


def test_sigterm_exits_within_15s_leaving_no_process(tmp_path):
    model = make_tiny_llama(tmp_path / "tiny-llama", ensure_default_model())
    config = write_config(
        tmp_path / "corrigo.toml",
        {
            "model": {"path": str(model)},
            "engine": {**TEST_ENGINE, "max_model_len": 512},
            "server": {"graceful_shutdown_seconds": 5},
        },
    )
    server = start_server(config, tmp_path / "server.log")
    try:
        parent = psutil.Process(server.pid)
        family = parent.children(recursive=True)
        assert any(
            "EngineCore" in " ".join(p.cmdline()) or "EngineCore" in p.name() for p in family
        ), [p.cmdline() for p in family]

        # A long streaming request is in flight when SIGTERM arrives.
        streamed = threading.Event()

        def stream():
            body = {
                "model": "tiny-llama",
                "prompt": "a",
                "max_tokens": 400,
                "stream": True,
                "ignore_eos": True,
            }
            try:
                with httpx.stream(
                    "POST", f"{server.base_url}/v1/completions", json=body, timeout=60
                ) as r:
                    for _ in r.iter_lines():
                        streamed.set()
            except httpx.HTTPError:
                pass

        worker = threading.Thread(target=stream, daemon=True)
        worker.start()
        assert streamed.wait(60)

        started = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        server.process.wait(timeout=30)
        elapsed = time.monotonic() - started
        assert elapsed < 15, f"took {elapsed:.1f}s to exit"
        time.sleep(1)  # let the kernel reap
        alive = [p for p in family if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        assert alive == [], [p.cmdline() for p in alive]
    finally:
        server.stop(signal.SIGKILL)
