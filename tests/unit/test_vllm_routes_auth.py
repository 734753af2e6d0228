"""The routes corrigo adds beside generation (/tokenize, /detokenize, LoRA load and unload,
/version; server/vllm_routes.py) are behind its API keys, readiness and the per-key rate limit
the generation routes share: checked on the real routers over an engine that never starts."""

from __future__ import annotations

import asyncio
from argparse import Namespace

import httpx
import pytest
from fastapi import FastAPI

from adapters.engine import ServedModel
from adapters.vllm_compat import VLLM_VERSION
from server.admission import RateLimiter
from server.auth import APIKeyAuth
from server.config import LimitsConfig
from server.errors import install_error_handlers
from server.metrics import server_metrics
from server.openai_api import build_router
from server.runtime import EngineRuntime
from server.vllm_routes import build_vllm_router

KEY = "k-0123"
ROUTES = ["/tokenize", "/detokenize", "/v1/load_lora_adapter", "/v1/unload_lora_adapter"]


def app(limiter: RateLimiter | None = None) -> FastAPI:
    runtime = EngineRuntime(ServedModel(path="unused", model_id="m"), None, Namespace())
    limits = LimitsConfig()
    auth = APIKeyAuth([KEY])
    out = FastAPI()
    install_error_handlers(out)
    out.include_router(build_router(runtime, limits, server_metrics(), auth, rate_limiter=limiter))
    out.include_router(build_vllm_router(runtime, limits, server_metrics(), auth, limiter, "1.0"))
    return out


def call(server: FastAPI, requests: list[tuple[str, str, str | None]]) -> list[httpx.Response]:
    async def run() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=server, client=("10.0.0.1", 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as c:
            out = []
            for method, path, key in requests:
                headers = {"Authorization": f"Bearer {key}"} if key else {}
                out.append(await c.request(method, path, json={}, headers=headers))
            return out

    return asyncio.run(run())


@pytest.fixture
def lora_updating(monkeypatch):
    monkeypatch.setenv("VLLM_ALLOW_RUNTIME_LORA_UPDATING", "1")


def test_every_added_route_needs_a_key_then_a_ready_engine(lora_updating):
    responses = call(app(), [("POST", p, k) for p in ROUTES for k in (None, "wrong", KEY)])
    statuses = [r.status_code for r in responses]
    assert statuses == [401, 401, 503] * len(ROUTES)
    assert responses[0].json()["error"]["code"] == "invalid_api_key"


def test_lora_routes_exist_only_where_vllm_allows_them(monkeypatch):
    monkeypatch.delenv("VLLM_ALLOW_RUNTIME_LORA_UPDATING", raising=False)
    statuses = [r.status_code for r in call(app(), [("POST", p, KEY) for p in ROUTES])]
    assert statuses == [503, 503, 404, 404]


def test_version_answers_without_a_key_like_health():
    (r,) = call(app(), [("GET", "/version", None)])
    assert r.status_code == 200 and r.json() == {"version": VLLM_VERSION, "corrigo": "1.0"}


def test_one_rate_limit_spans_generation_and_the_added_routes(lora_updating):
    limiter = RateLimiter(60, burst=2)
    paths = [("POST", "/v1/chat/completions", KEY), ("POST", "/tokenize", KEY)]
    paths += [("POST", "/v1/load_lora_adapter", KEY)]
    statuses = [r.status_code for r in call(app(limiter), paths)]
    assert statuses == [503, 503, 429]


def test_the_openapi_document_describes_them(lora_updating):
    (r,) = call(app(), [("GET", "/openapi.json", None)])
    paths = r.json()["paths"]
    for path in [*ROUTES, "/v1/responses"]:
        assert "requestBody" in paths[path]["post"], path
    assert "get" in paths["/version"]
