"""The engine behind the server and vLLM's serving objects, with their life cycle.

The HTTP server comes up at once; the engine starts in the background (tens of seconds on a
CPU). Until it is ready, /health answers 200 (the process is alive) while /ready and every /v1
route answer 503, so orchestrators and clients can tell "starting" from "dead".
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import enum
import logging
from collections.abc import Callable, Mapping
from typing import Any

import psutil
from starlette.datastructures import State

from adapters.engine import ServedModel, start_engine, stop_engine
from adapters.engine_channel import FigureReceiver, StepMessage
from adapters.request_reports import ReportBook
from adapters.step_timing import StepHistograms
from adapters.vllm_compat import AsyncEngineArgs, AsyncLLM, init_app_state
from decoding.contract import AdmissionStep
from decoding.registry import DEFAULT, Registry

from .errors import APIError
from .profiles import Catalog

logger = logging.getLogger(__name__)


class Phase(enum.Enum):
    STARTING = "starting"
    READY = "ready"
    FAILED = "failed"
    STOPPED = "stopped"


class EngineRuntime:
    """Owns the vLLM engine and the vLLM serving objects built on it."""

    def __init__(
        self,
        model: ServedModel,
        args: AsyncEngineArgs,
        frontend: argparse.Namespace,
        *,
        registry: Registry = DEFAULT,
        correction_context: Mapping[str, Any] | None = None,
        catalog: Catalog | None = None,
        admissions: Mapping[str, AdmissionStep] | None = None,
        figures: FigureReceiver | None = None,
    ) -> None:
        #: Called when the engine cannot start; the CLI uses it to stop the server, so that a
        #: broken deployment exits non-zero instead of answering 503 forever.
        self.on_fatal: Callable[[], None] | None = None
        self.model = model
        self.args = args
        #: What vLLM's serving classes are built from: the ``vllm serve`` namespace of
        #: ``[frontend]`` and the engine arguments (adapters/frontend.py ``frontend_namespace``).
        self.frontend = frontend
        #: The per-step corrections served (decoding/registry.py), as the engine has them.
        self.registry = registry
        #: What request validation needs to know about this deployment: the manifest's
        #: context and the server's own keys (refinement caps, sandbox, forget-set policies).
        self.correction_context = dict(correction_context or {})
        #: The model ids clients may name: profiles by name, and the served model unless hidden
        #: (server/profiles.py).
        self.catalog = catalog if catalog is not None else Catalog(model.model_id, {})
        #: The served corrections' server-side steps, by correction name (the unlearning gate,
        #: where forget sets are declared: decoding/unlearning/admission.py).
        self.admissions = dict(admissions or {})
        #: The report channel the engine's output rank sends each step's figures on, and
        #: where they are kept: per request (reports) and per plugin (/metrics).
        self.figures = figures
        self.reports = ReportBook(registry)
        self.step_times = StepHistograms()
        self._receiving: asyncio.Task | None = None
        self.phase = Phase.STARTING
        self.failure: str | None = None
        self.engine: AsyncLLM | None = None
        #: vLLM's serving objects (``openai_serving_chat``, ``openai_serving_completion``,
        #: ``openai_serving_models``...), built by vLLM's own ``init_app_state``.
        self.serving = State()
        #: The processes the engine started (engine core, its workers), killed at stop if left.
        self._engine_processes: list[psutil.Process] = []

    async def start(self) -> None:
        try:
            if self.figures is not None:
                self._receiving = asyncio.create_task(self.figures.run(self._file))
            # Engine start blocks for tens of seconds (it spawns and handshakes the engine-core
            # process); a thread keeps the event loop serving /health meanwhile.
            self.engine = await asyncio.to_thread(start_engine, self.args)
            self._engine_processes = psutil.Process().children(recursive=True)
            tasks = await self.engine.get_supported_tasks()
            await init_app_state(self.engine, self.serving, self._serving_args(), tasks)
        except asyncio.CancelledError:
            self.phase = Phase.STOPPED
            raise
        except Exception as exc:  # the server stays up to report it on /ready
            logger.exception("the vLLM engine failed to start")
            self.phase, self.failure = Phase.FAILED, f"{type(exc).__name__}: {exc}"
            if self.on_fatal is not None:
                self.on_fatal()
            return
        self.phase = Phase.READY
        logger.info("engine ready: serving %s as '%s'", self.model.path, self.model.model_id)

    def _serving_args(self) -> argparse.Namespace:
        """The front-end namespace with the configs the engine resolved where vLLM's serving
        classes read engine-side ones (the reasoning parser sits in
        ``structured_outputs_config``)."""
        assert self.engine is not None
        args = copy.copy(self.frontend)
        args.structured_outputs_config = self.engine.vllm_config.structured_outputs_config
        return args

    def _file(self, message: StepMessage) -> None:
        self.reports.record(message.rows)
        self.step_times.record(message.timings)

    def stop(self) -> None:
        if self.engine is not None:
            stop_engine(self.engine)
            self.engine = None
        if self._receiving is not None:
            self._receiving.cancel()
            self._receiving = None
        if self.figures is not None:
            self.figures.close()
        # A dead engine core leaves its own children (workers, resource tracker) orphaned:
        # vLLM's shutdown cannot reach them, so they go here.
        for process in self._engine_processes:
            with contextlib.suppress(psutil.Error):
                if process.is_running():
                    logger.warning("killing engine process %d left after shutdown", process.pid)
                    process.kill()
        self.phase = Phase.STOPPED

    @property
    def logits_processors(self) -> list[str]:
        """The logits processors the engine was started with (as FQCN strings)."""
        if self.engine is None:
            return []
        return [str(p) for p in self.engine.vllm_config.model_config.logits_processors or ()]

    def lora_adapters(self) -> frozenset[str]:
        """The LoRA adapters vLLM serves now (``--lora-modules``, and those loaded at run time
        where vLLM allows it), by the model id requests name them with."""
        models = getattr(self.serving, "openai_serving_models", None)
        return frozenset(models.lora_requests) if models is not None else frozenset()

    @property
    def ready(self) -> bool:
        return self.phase is Phase.READY and self.engine is not None and not self.engine.errored

    def require_ready(self) -> None:
        """Raise 503 unless requests can be served now."""
        if self.ready:
            return
        if self.phase is Phase.STARTING:
            message = "The engine is starting; retry shortly."
        elif self.phase is Phase.READY:  # started, then its engine-core process died
            message = "The engine has stopped working; the server must be restarted."
        elif self.phase is Phase.FAILED:
            message = f"The engine failed to start: {self.failure}"
        else:
            message = "The server is shutting down."
        raise APIError(503, message, code="engine_not_ready", headers={"Retry-After": "5"})
