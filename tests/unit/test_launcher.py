"""server/launcher.py against a stand-in for ``corrigo serve``: a real process that answers
/health and /ready like corrigo and, like vLLM's engine core, leaves a child that ignores SIGTERM.
No engine: the launcher's waiting, error reporting and clean-up are what is tested."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import psutil
import pytest

from server.launcher import start_server

#: ``FAKE serve --config PATH --port PORT``. MODE (the config file's text): "ok" gets ready after
#: 0.5 s; "crash" prints and exits 3; "never" answers /ready 503 forever. The child's pid goes
#: to PATH.child. On SIGTERM the server exits at once, leaving the child behind (an orphaned
#: engine core, which ignores SIGTERM).
FAKE = r"""
import http.server, os, signal, subprocess, sys, time
config, port = sys.argv[3], int(sys.argv[5])
mode = open(config).read().strip()
print("fake corrigo starting:", mode, flush=True)
if mode == "crash":
    print("corrigo: the engine failed to start: out of memory", flush=True)
    sys.exit(3)
child = subprocess.Popen(
    [sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"]
)
open(config + ".child", "w").write(str(child.pid))
started = time.monotonic()

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        ready = mode == "ok" and time.monotonic() - started > 0.5
        code = 200 if self.path == "/health" or (self.path == "/ready" and ready) else 503
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass

signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
http.server.HTTPServer(("127.0.0.1", port), Handler).serve_forever()
"""


@pytest.fixture
def fake(tmp_path: Path):
    script = tmp_path / "fake_corrigo.py"
    script.write_text(FAKE)

    def run(mode: str, **kwargs):
        config = tmp_path / f"{mode}.toml"
        config.write_text(mode)
        return config, start_server(
            config, tmp_path / f"{mode}.log", command=(sys.executable, str(script)), **kwargs
        )

    return run


def child_of(config: Path) -> int:
    return int(Path(f"{config}.child").read_text())


def gone(pid: int, within: float = 5) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
            return True
        time.sleep(0.05)
    return False


def test_ready_probes_and_stop_leaves_no_process(fake) -> None:
    config, server = fake("ok", probe_during_startup={"ready": "/ready"})
    assert server.during_startup["ready"].status_code == 503  # fetched while "starting"
    child = child_of(config)
    assert psutil.pid_exists(child)
    server.stop(timeout=5)
    assert server.process.returncode == 0
    # The server exited on SIGTERM without its child; the group kill took the child too.
    assert gone(child), "the orphaned child survived stop()"


def test_exit_before_ready_raises_with_the_log(fake) -> None:
    with pytest.raises(RuntimeError) as error:
        fake("crash")
    assert "exited with 3" in str(error.value)
    assert "the engine failed to start: out of memory" in str(error.value)


def test_deadline_raises_with_the_log_and_kills_the_group(fake, tmp_path: Path) -> None:
    started = time.monotonic()
    with pytest.raises(TimeoutError) as error:
        fake("never", ready_timeout=1.5)
    assert time.monotonic() - started < 15
    assert "/ready did not answer 200 in time" in str(error.value)
    assert "fake corrigo starting: never" in str(error.value)
    assert gone(child_of(tmp_path / "never.toml"))


def test_env_and_cwd_reach_the_server(fake, tmp_path: Path) -> None:
    # The launcher adds ``env`` to this process's environment and runs in ``cwd``.
    config, server = fake("ok", env={"CORRIGO_LAUNCHER_PROBE": "1"}, cwd=tmp_path)
    try:
        process = psutil.Process(server.pid)
        assert process.environ().get("CORRIGO_LAUNCHER_PROBE") == "1"
        assert process.environ().get("PATH") == os.environ.get("PATH")
        assert Path(process.cwd()) == tmp_path
        assert os.getpgid(server.pid) == server.pid  # its own process group
    finally:
        server.stop(signal.SIGKILL)
