"""``corrigo serve`` in a subprocess: the one way evaluations, benchmarks and tests start a server
of their own.

The server runs in its own session (process group) with its output in a log file; it is ready
when ``/ready`` answers 200 (the engine is up). Stopping sends SIGTERM (corrigo drains and shuts
its engine down), waits, then SIGKILLs whatever is left of the group: vLLM's engine core is a
child process that, orphaned, ignores SIGTERM, so a crashed or hung server must not leave it
running.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

#: ``corrigo`` run by this interpreter; the launcher appends ``serve --config ... --port ...``.
CORRIGO: tuple[str, ...] = (sys.executable, "-m", "server.cli")
#: Engine settings for a quick start on a CPU: eager (no compile: ~40 s instead of ~110 s),
#: short context, and a fixed KV cache: the CPU engine otherwise sizes it from the share of host
#: memory left beside its own resident size, which on a busy machine can come out too small.
QUICK_ENGINE: Mapping[str, object] = {
    "enforce_eager": True,
    "max_model_len": 2048,
    "kv_cache_memory_bytes": 2 << 30,
}
#: Characters of the server's log shown when it fails to start.
LOG_TAIL = 5000


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on now (the server binds it a moment later)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class LiveServer:
    """A running ``corrigo serve`` subprocess, leader of its own process group."""

    process: subprocess.Popen
    base_url: str
    log_path: Path
    #: Responses to the ``probe_during_startup`` paths, fetched while the engine was starting.
    during_startup: Mapping[str, httpx.Response] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for(self, path: str, deadline: float, client: httpx.Client | None = None) -> None:
        """Poll ``path`` until it answers 200; raise, with the log's tail, if the server exits
        first or ``deadline`` (``time.monotonic()``) passes."""
        with contextlib.ExitStack() as stack:
            if client is None:
                client = stack.enter_context(httpx.Client(base_url=self.base_url, timeout=10))
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(
                        f"corrigo serve exited with {self.process.returncode} before {path} "
                        f"answered; the end of {self.log_path}:\n{self.log()[-LOG_TAIL:]}"
                    )
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(path).status_code == 200:
                        return
                time.sleep(0.25)
        raise TimeoutError(
            f"corrigo serve: {path} did not answer 200 in time; the end of {self.log_path}:\n"
            f"{self.log()[-LOG_TAIL:]}"
        )

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> None:
        """Send ``sig``, wait up to ``timeout`` seconds, then SIGKILL the whole group."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout)
        # Whatever is left of the group (after a clean shutdown, nothing) goes too.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(10)


def start_server(
    config: Path,
    log_path: Path,
    *,
    command: Sequence[str] = CORRIGO,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    ready_timeout: float = 900,
    probe_during_startup: Mapping[str, str] | None = None,
    probe_headers: Mapping[str, str] | None = None,
    flags: Sequence[str] = (),
) -> LiveServer:
    """Start ``command serve --config config --port PORT [flags]`` on a free port and return
    once ``/ready`` answers 200. ``env`` is added to this process's environment; ``flags`` are
    further ``corrigo serve`` flags (``vllm serve``'s among them).

    ``probe_during_startup`` maps names to paths fetched (with ``probe_headers``) as soon as
    ``/health`` answers, while the engine is still starting; the responses are kept in
    :attr:`LiveServer.during_startup`. On any failure the server is killed before this raises.
    """
    port = free_port()
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [*command, "serve", "--config", str(config), "--port", str(port), *flags],
            cwd=cwd,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env={**os.environ, **(env or {})},
        )
    server = LiveServer(process, f"http://127.0.0.1:{port}", log_path)
    deadline = time.monotonic() + ready_timeout
    try:
        with httpx.Client(base_url=server.base_url, timeout=10) as client:
            probes = {}
            if probe_during_startup:
                server.wait_for("/health", deadline, client)
                headers = dict(probe_headers or {})
                probes = {
                    n: client.get(p, headers=headers) for n, p in probe_during_startup.items()
                }
            server.wait_for("/ready", deadline, client)
    except BaseException:
        server.stop(signal.SIGKILL)
        raise
    return dataclasses.replace(server, during_startup=probes)
