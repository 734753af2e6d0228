"""Browsers and identity: the Host header (DNS rebinding), the warning for a keyless server on
a public address, and who a rate limit counts against.

The session server lists ``trusted_hosts = ["127.0.0.1"]`` (tests/conftest.py).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from argparse import Namespace

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from adapters.engine import ServedModel
from server.auth import APIKeyAuth, keyless_exposure_warning
from server.cli import uvicorn_config
from server.config import LimitsConfig, ServerConfig
from server.errors import install_error_handlers
from server.metrics import server_metrics
from server.openai_api import build_router
from server.runtime import EngineRuntime

from ..conftest import SERVED_MODEL
from ..support import REPO, free_port, write_config

CHAT = {"model": SERVED_MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1}


@pytest.mark.engine
def test_a_host_header_not_listed_is_refused(http, live_server):
    port = live_server.base_url.rsplit(":", 1)[1]
    for host in ["evil.example", f"attacker.example:{port}", "127.0.0.1.evil.example", ""]:
        models = http.get("/v1/models", headers={"Host": host})
        assert models.status_code == 400, (host, models.text)
        error = models.json()["error"]
        assert error["code"] == "untrusted_host" and error["type"] == "invalid_request_error"
        chat = http.post("/v1/chat/completions", json=CHAT, headers={"Host": host})
        assert chat.status_code == 400
        assert http.get("/ready", headers={"Host": host}).status_code == 400
        assert http.get("/metrics", headers={"Host": host}).status_code == 400
    # Liveness answers any Host (orchestrators probe by address); its body says nothing.
    assert http.get("/health", headers={"Host": "evil.example"}).json() == {"status": "ok"}
    # The listed host, with any port and in any case, is served.
    assert http.get("/v1/models", headers={"Host": f"127.0.0.1:{port}"}).status_code == 200
    assert http.get("/v1/models", headers={"Host": "127.0.0.1"}).status_code == 200


def _limited_app(keys: list[str]) -> FastAPI:
    """The real /v1 router (auth, rate limiter) over an engine that never starts: a request the
    limiter lets through is answered 503 (not ready), one it stops 429."""
    runtime = EngineRuntime(
        ServedModel(path="unused", model_id=SERVED_MODEL), args=None, frontend=Namespace()
    )
    app = FastAPI()
    install_error_handlers(app)
    limits = LimitsConfig(requests_per_minute=2, rate_limit_burst=2)
    app.include_router(build_router(runtime, limits, server_metrics(), APIKeyAuth(keys)))
    return app


def _statuses(app: FastAPI, requests: list[tuple[str, str | None]]) -> list[int]:
    """Status of each (client address, bearer string or None) request, in order."""

    async def run() -> list[int]:
        out = []
        for address, bearer in requests:
            transport = httpx.ASGITransport(app=app, client=(address, 40000))
            headers = {"Authorization": f"Bearer {bearer}"} if bearer else {}
            async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as c:
                response = await c.post("/v1/chat/completions", json=CHAT, headers=headers)
                out.append(response.status_code)
        return out

    return asyncio.run(run())


def test_without_keys_rotating_bearer_strings_does_not_reset_the_rate_limit():
    app = _limited_app([])
    rotating = [("203.0.113.7", f"made-up-{i}") for i in range(4)]
    assert _statuses(app, rotating) == [503, 503, 429, 429]
    # Another address has its own bucket.
    assert _statuses(app, [("203.0.113.8", None)]) == [503]


def test_with_keys_the_limit_follows_the_validated_key_not_the_address():
    app = _limited_app(["key-a", "key-b"])
    statuses = _statuses(
        app,
        [
            ("203.0.113.7", "key-a"),
            ("203.0.113.9", "key-a"),  # the same key from elsewhere: the same bucket
            ("203.0.113.7", "key-a"),
            ("203.0.113.7", "key-b"),  # another key from the same address: its own bucket
            ("203.0.113.7", "wrong"),  # refused before it counts
        ],
    )
    assert statuses == [503, 503, 429, 503, 401]


def _serve_output(tmp_path, host: str) -> str:
    """``corrigo serve`` without keys on ``host``, stopped by a bad engine argument right after
    the start-up checks (no engine, no socket)."""
    config = write_config(tmp_path / "serve.toml", {"engine": {"no_such_engine_argument": 1}})
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORRIGO_")}
    result = subprocess.run(
        [sys.executable, "-m", "server.cli", "serve", "--config", str(config), "--host", host],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2, result.stderr
    return result.stdout + result.stderr


def test_serving_without_keys_on_a_public_address_warns_loudly(tmp_path):
    output = _serve_output(tmp_path, "0.0.0.0")
    assert "WARNING" in output and "without API keys on 0.0.0.0" in output
    assert "corrigo: WARNING: serving without API keys" in output  # printed, not only logged
    assert keyless_exposure_warning("0.0.0.0", []) is not None
    for host in ["::", "192.0.2.10", "corrigo.internal"]:
        assert keyless_exposure_warning(host, []) is not None
    for host, keys in [("127.0.0.1", []), ("::1", []), ("localhost", []), ("0.0.0.0", ["k"])]:
        assert keyless_exposure_warning(host, keys) is None


def test_forwarded_for_headers_are_not_believed_unless_configured():
    """Through uvicorn as ``corrigo serve`` configures it: a local client rotating
    ``X-Forwarded-For`` stays one address (uvicorn's default would believe 127.0.0.1)."""
    server = uvicorn.Server(
        uvicorn_config(_limited_app([]), ServerConfig(port=free_port(), log_level="warning"))
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.config.port}"
        with httpx.Client(base_url=base, timeout=10) as client:
            deadline = time.monotonic() + 30
            while not server.started and time.monotonic() < deadline:
                time.sleep(0.05)
            statuses = [
                client.post(
                    "/v1/chat/completions",
                    json=CHAT,
                    headers={"X-Forwarded-For": f"198.51.100.{i}"},
                ).status_code
                for i in range(3)
            ]
        assert statuses == [503, 503, 429]
    finally:
        server.should_exit = True
        thread.join(10)
