"""A ``corrigo serve`` subprocess for evaluations that bring their own server."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

#: Eager engine (no compile at start), short context: what evaluations on CPU need.
EVAL_CONFIG = """
[engine]
enforce_eager = true
max_model_len = 2048

[refinement]
max_rounds = {max_rounds}
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def local_server(
    max_rounds: int = 1, timeout: float = 600, extra_config: str = ""
) -> Iterator[str]:
    """Start the embedded model behind ``corrigo serve`` on a free port; yield its base URL.

    ``extra_config`` is TOML appended to :data:`EVAL_CONFIG` (e.g. ``[aux_models.NAME]``
    sections)."""
    with tempfile.TemporaryDirectory(prefix="corrigo-eval-") as tmp:
        config = Path(tmp) / "corrigo.toml"
        config.write_text(EVAL_CONFIG.format(max_rounds=max_rounds) + extra_config)
        port = _free_port()
        log = (Path(tmp) / "server.log").open("w")
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "server.cli",
                "serve",
                "--config",
                str(config),
                "--port",
                str(port),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        url = f"http://127.0.0.1:{port}"
        # A SIGTERM (e.g. from `timeout`) must still stop the server, which runs in its own
        # session: turn it into SystemExit so the finally clause below runs.
        previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
        try:
            deadline = time.monotonic() + timeout
            while True:
                if process.poll() is not None:
                    raise RuntimeError(
                        f"corrigo serve exited: {(Path(tmp) / 'server.log').read_text()[-3000:]}"
                    )
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"{url}/ready", timeout=5).status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise TimeoutError("corrigo serve did not become ready")
                time.sleep(0.5)
            yield url
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            log.close()
            signal.signal(signal.SIGTERM, previous)


def _exit_on_sigterm(signum, frame) -> None:
    raise SystemExit(128 + signum)
