"""Building and stopping the in-process vLLM engine (``AsyncLLM``) from corrigo's config."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .default_model import DEFAULT_MODEL_ID, ensure_default_model
from .dtypes import cpu_has_native_bf16
from .logits_processor import LOGITS_PROCESSOR_FQCN
from .vllm_compat import AsyncEngineArgs, AsyncLLM, running_on_cpu

logger = logging.getLogger(__name__)

#: On the CPU build ``gpu_memory_utilization`` is the share of host memory given to the KV
#: cache; vLLM's default (0.92) does not fit beside the server, 0.2 does (DESIGN.md section 2).
CPU_MEMORY_UTILIZATION = 0.2
#: Engine arguments corrigo sets itself; the config may not override them.
RESERVED_ENGINE_ARGS = {"model", "served_model_name", "logits_processors"}


class EngineConfigError(ValueError):
    """An ``[engine]`` setting vLLM rejects; the message names it."""


@dataclass(frozen=True)
class ServedModel:
    """The model behind the engine: where its weights are and the id clients use."""

    path: str
    model_id: str


def resolve_model(path: str | None, served_model_name: str | None) -> ServedModel:
    """The embedded default when ``path`` is None (converting it on first use), else ``path``."""
    if path is None:
        return ServedModel(str(ensure_default_model()), served_model_name or DEFAULT_MODEL_ID)
    folder = Path(path).expanduser()
    if folder.exists():
        return ServedModel(str(folder.resolve()), served_model_name or folder.resolve().name)
    return ServedModel(path, served_model_name or path)  # a hub id, where a hub is reachable


def engine_args(model: ServedModel, engine: Mapping[str, Any]) -> AsyncEngineArgs:
    """vLLM engine arguments: the ``[engine]`` section passed through, validated by vLLM's own
    ``AsyncEngineArgs`` (unknown names and bad values are refused here, before any start-up)."""
    reserved = RESERVED_ENGINE_ARGS & set(engine)
    if reserved:
        raise EngineConfigError(
            f"engine.{sorted(reserved)[0]} is set by corrigo; use [model] path / served_model_name"
        )
    known = {f.name for f in dataclasses.fields(AsyncEngineArgs)}
    unknown = sorted(set(engine) - known)
    if unknown:
        raise EngineConfigError(
            f"engine.{unknown[0]} is not a vLLM engine argument "
            "(see `python -c 'from vllm.engine.arg_utils import EngineArgs; help(EngineArgs)'`)"
        )
    settings = dict(engine)
    if running_on_cpu():
        settings.setdefault("gpu_memory_utilization", CPU_MEMORY_UTILIZATION)
        if not cpu_has_native_bf16():
            settings.setdefault("dtype", "float32")
    try:
        args = AsyncEngineArgs(
            model=model.path,
            served_model_name=[model.model_id],
            logits_processors=[LOGITS_PROCESSOR_FQCN],
            **settings,
        )
    except (TypeError, ValueError) as exc:
        raise EngineConfigError(f"[engine] rejected by vLLM: {exc}") from None
    return args


def check_engine_args(args: AsyncEngineArgs):
    """Let vLLM validate the values (it builds its full config; nothing is loaded or started),
    so a bad ``[engine]`` setting fails at start-up with vLLM's own message. Returns that config
    (``VllmConfig``: defaults resolved, e.g. ``max_num_seqs`` and the dtype)."""
    try:
        return args.create_engine_config()
    except Exception as exc:
        raise EngineConfigError(f"[engine] rejected by vLLM: {exc}") from None


def start_engine(args: AsyncEngineArgs) -> AsyncLLM:
    """Start vLLM's engine core (a separate process) and connect to it. Blocks until ready."""
    logger.info("starting vLLM engine for %s", args.model)
    return AsyncLLM.from_engine_args(args)


def stop_engine(engine: AsyncLLM) -> None:
    """Shut the engine down, including its engine-core process (never leave it orphaned)."""
    engine.shutdown()
