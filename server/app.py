"""The FastAPI application: routes, error handling, metrics and the engine's life cycle."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from prometheus_client import make_asgi_app
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from adapters import aux_models, copilots, forget_sets, request_reports, sandbox, step_timing
from adapters.aux_budget import Declared
from adapters.aux_memory import copilot_shape, model_shape
from adapters.engine import ServedModel, engine_args
from adapters.python_tests import SANDBOX_CONTEXT
from adapters.request_reports import ReportSlots
from adapters.vllm_compat import VLLM_VERSION, get_prometheus_registry
from decoding.copilot import COPILOTS_CONTEXT
from decoding.unlearning import FORGET_SETS_CONTEXT, POLICIES_CONTEXT

from .auth import APIKeyAuth
from .config import Config
from .errors import install_error_handlers
from .metrics import PluginStepCollector, server_metrics
from .openai_api import build_router
from .openapi import error_responses
from .profiles import catalog, load_profiles
from .refinement import RefinementDriver, configure_refinement
from .request_id import RequestIdMiddleware
from .runtime import EngineRuntime
from .trusted_hosts import TrustedHostMiddleware
from .unlearning import UnlearningGate
from .unlearning import policies as forget_set_policies


def create_app(config: Config, model: ServedModel) -> FastAPI:
    """Build the app. The engine starts when the app starts (in the background) and is shut
    down, engine-core process included, when the app stops."""
    aux = {name: aux_models.resolve_path(spec.path) for name, spec in config.aux_models.items()}
    for name, path in aux.items():
        aux_models.check_compatible(name, path, model.path)
    runtime = EngineRuntime(model, engine_args(model, config.engine), aux)
    judges = configure_refinement(runtime, config)
    python_sandbox = _python_sandbox(config)
    runtime.correction_context[SANDBOX_CONTEXT] = python_sandbox.refusal
    bound = {
        name: str(Path(spec.path).expanduser().resolve()) for name, spec in config.copilots.items()
    }
    for name, path in bound.items():
        copilots.check_binding(name, path, model.path)
    copilots.publish(bound)
    runtime.correction_context[COPILOTS_CONTEXT] = set(bound)

    # The engine process records per-step plugin times in files here; /metrics reads them.
    step_metrics = tempfile.mkdtemp(prefix="corrigo-step-metrics-")
    os.environ[step_timing.ENV] = step_metrics
    # The engine process records per-request figures (copilot, unlearning) in slots of this file.
    runtime.reports = ReportSlots(Path(step_metrics) / "request-reports.bin")
    os.environ[request_reports.ENV] = str(runtime.reports.path)
    runtime.unlearning = _unlearning_gate(config)
    gates = runtime.unlearning.gates if runtime.unlearning is not None else {}
    # Always declared, so that naming a forget set on a server without any is a 400.
    runtime.correction_context[FORGET_SETS_CONTEXT] = {
        n: len(g.forget_set) for n, g in gates.items()
    }
    runtime.correction_context[POLICIES_CONTEXT] = forget_set_policies(config.forget_sets)
    profiles = load_profiles(config.profiles, model.model_id, runtime.correction_context)
    runtime.catalog = catalog(profiles, model.model_id, base_public=config.model.public)
    registry = get_prometheus_registry()
    registry.register(PluginStepCollector(step_metrics))

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        starting = asyncio.create_task(runtime.start())
        try:
            yield
        finally:
            shutil.rmtree(step_metrics, ignore_errors=True)
            if not starting.done():
                # The engine is mid-start in a thread; let it finish so it can be shut down.
                with contextlib.suppress(Exception):
                    await asyncio.shield(starting)
            runtime.stop()

    app = FastAPI(title="corrigo", version=_version(), lifespan=lifespan)
    app.state.runtime = runtime
    install_error_handlers(app)
    if config.server.trusted_hosts is not None:
        app.add_middleware(TrustedHostMiddleware, hosts=config.server.trusted_hosts)
    app.add_middleware(RequestIdMiddleware)  # outermost: refused hosts are logged too

    @app.get("/health")
    async def health() -> JSONResponse:
        """Liveness: the server process answers."""
        return JSONResponse({"status": "ok"})

    @app.get("/ready", responses=error_responses(503))
    async def ready() -> JSONResponse:
        """Readiness: the engine is up and serving."""
        runtime.require_ready()
        return JSONResponse(
            {
                "status": "ready",
                "model": model.model_id,
                "vllm": VLLM_VERSION,
                "logits_processors": runtime.logits_processors,
                "sandbox": python_sandbox.report.to_json(),
            }
        )

    # One registry holds vLLM's vllm:* series and corrigo's corrigo_* series. A Route (not a
    # Mount) so that /metrics answers directly instead of redirecting to /metrics/.
    app.router.routes.append(
        Route("/metrics", _ASGIEndpoint(make_asgi_app(get_prometheus_registry())))
    )
    refinement = RefinementDriver(
        runtime, server_metrics(), config.refinement.keepalive_seconds, judges
    )
    app.include_router(
        build_router(
            runtime,
            config.limits,
            server_metrics(),
            APIKeyAuth(config.auth.api_keys),
            refinement=refinement,
        )
    )
    return app


def aux_declared(config: Config) -> list[Declared]:
    """The auxiliary models and copilots the config declares, sized from their configs, for
    the start-up memory check (adapters/aux_budget.py)."""
    aux = [
        Declared(f"aux_models.{name}", model_shape(aux_models.resolve_path(spec.path)), spec.dtype)
        for name, spec in config.aux_models.items()
    ]
    return aux + [
        Declared(f"copilots.{name}", copilot_shape(spec.path), spec.dtype)
        for name, spec in config.copilots.items()
    ]


def _python_sandbox(config: Config) -> sandbox.Sandbox:
    """Probe the python_tests sandbox once (logged); python_tests is refused where the host
    cannot give the configured isolation."""
    return sandbox.configure(sandbox.SandboxPolicy(**config.sandbox.model_dump()))


def _unlearning_gate(config: Config) -> UnlearningGate | None:
    """Load the forget sets for the gate and publish them to the engine process, which loads
    them again for the filters."""
    paths = {name: forget_sets.resolve_path(s.path) for name, s in config.forget_sets.items()}
    forget_sets.publish(paths)
    if not paths:
        return None
    import torch

    from adapters.embeddings import minilm

    # The gate's MiniLM is the only torch work in this process. One thread keeps it off the
    # core(s) the engine computes on; its inputs are a few short texts per request.
    torch.set_num_threads(1)
    return UnlearningGate(
        forget_sets.load_all(paths),
        minilm(),
        server_metrics(),
        forget_set_policies(config.forget_sets),
        config.limits,
    )


class _ASGIEndpoint:
    """Wraps an ASGI callable so that a Starlette ``Route`` calls it as an app, not a handler."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Always the classic text format: in prometheus_client's OpenMetrics output (which
        # Prometheus asks for first) vLLM's "vllm:*" sample names come out as "vllm_*".
        headers = [(k, v) for k, v in scope.get("headers", []) if k != b"accept"]
        await self.app({**scope, "headers": headers}, receive, send)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("corrigo")
    except PackageNotFoundError:
        return "0+unknown"
