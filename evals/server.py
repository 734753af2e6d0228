"""A ``corrigo serve`` subprocess for evaluations that bring their own server."""

from __future__ import annotations

import contextlib
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

from server.launcher import start_server

#: Eager engine (no compile at start), short context: what evaluations on CPU need.
EVAL_CONFIG = """
[engine]
enforce_eager = true
max_model_len = 2048

[refinement]
max_rounds = {max_rounds}
"""


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
        # A SIGTERM (e.g. from `timeout`) must still stop the server, which runs in its own
        # session: turn it into SystemExit so the finally clause below runs.
        previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
        try:
            server = start_server(config, Path(tmp) / "server.log", ready_timeout=timeout)
            try:
                yield server.base_url
            finally:
                server.stop(timeout=60)
        finally:
            signal.signal(signal.SIGTERM, previous)


def _exit_on_sigterm(signum, frame) -> None:
    raise SystemExit(128 + signum)
