"""The FastAPI application: routes, error handling, metrics and the engine's life cycle."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from prometheus_client import make_asgi_app
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from adapters.engine import ServedModel, engine_args
from adapters.engine_channel import FigureReceiver
from adapters.frontend import frontend_namespace
from adapters.logits_processor import install_front_end
from adapters.vllm_compat import VLLM_VERSION, get_prometheus_registry
from decoding.contract import AdmissionStep, ServerSetup
from decoding.unlearning import POLICIES_CONTEXT
from decoding.unlearning.admission import policies as forget_set_policies

from .admission import rate_limiter
from .auth import APIKeyAuth
from .config import Config
from .deployment import Deployment, build_deployment
from .errors import install_error_handlers
from .metrics import PluginStepCollector, server_metrics
from .openai_api import build_router
from .openapi import error_responses
from .profiles import catalog, load_profiles
from .refinement.configure import configure_refinement
from .refinement.driver import RefinementDriver
from .refinement.python_tests import SANDBOX_CONTEXT
from .refinement.sandbox import runner as sandbox
from .request_id import RequestIdMiddleware
from .runtime import EngineRuntime
from .trusted_hosts import TrustedHostMiddleware
from .vllm_routes import build_vllm_router


def create_app(config: Config, model: ServedModel) -> FastAPI:
    """Build the app. The engine starts when the app starts (in the background) and is shut
    down, engine-core process included, when the app stops."""
    # The engine's output rank sends per-step figures here (adapters/engine_channel.py).
    figures = FigureReceiver(config.server.report_host, config.server.report_port)
    try:
        deployment = build_deployment(config, model, figures.channel)
    except BaseException:
        figures.close()
        raise
    manifest = deployment.manifest
    install_front_end(manifest)
    python_sandbox = _python_sandbox(config)
    # What requests are validated against: the deployment's names, then the server's keys.
    context = manifest.correction_context(deployment.registry)
    judges = configure_refinement(context, config)
    context[SANDBOX_CONTEXT] = python_sandbox.refusal
    context[POLICIES_CONTEXT] = forget_set_policies(config.forget_sets)
    profiles = load_profiles(config.profiles, model.model_id, context, deployment.registry)
    args = engine_args(model, config.engine, manifest)
    runtime = EngineRuntime(
        model,
        args,
        frontend_namespace(config.frontend, args),
        registry=deployment.registry,
        correction_context=context,
        catalog=catalog(profiles, model.model_id, base_public=config.model.public),
        admissions=_admissions(config, deployment),
        figures=figures,
    )
    registry = get_prometheus_registry()
    registry.register(PluginStepCollector(runtime.step_times))

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        starting = asyncio.create_task(runtime.start())
        try:
            yield
        finally:
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
    auth = APIKeyAuth(config.auth.api_keys)
    # One per-key budget across every route.
    limiter = rate_limiter(config.limits.requests_per_minute, config.limits.rate_limit_burst)
    app.include_router(
        build_router(
            runtime,
            config.limits,
            server_metrics(),
            auth,
            refinement=refinement,
            rate_limiter=limiter,
        )
    )
    app.include_router(
        build_vllm_router(runtime, config.limits, server_metrics(), auth, limiter, _version())
    )
    return app


def _python_sandbox(config: Config) -> sandbox.Sandbox:
    """Probe the python_tests sandbox once (logged); python_tests is refused where the host
    cannot give the configured isolation."""
    return sandbox.configure(sandbox.SandboxPolicy(**config.sandbox.model_dump()))


def _admissions(config: Config, deployment: Deployment) -> dict[str, AdmissionStep]:
    """Each served correction's server-side step, where it has one (the unlearning gate)."""
    setup = ServerSetup(deployment, config, server_metrics())
    steps = {c.name: c.admission(setup) for c in deployment.registry}
    return {name: step for name, step in steps.items() if step is not None}


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
