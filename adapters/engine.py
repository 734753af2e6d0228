"""Building and stopping the in-process vLLM engine (``AsyncLLM``) from corrigo's config."""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from decoding.aux.dtypes import cpu_has_native_bf16

from .default_model import DEFAULT_MODEL_ID, ensure_default_model
from .logits_processor import LOGITS_PROCESSOR_FQCN
from .manifest import DeploymentManifest
from .vllm_compat import AsyncEngineArgs, AsyncLLM, platform_runs_ray, running_on_cpu

logger = logging.getLogger(__name__)

#: On the CPU build ``gpu_memory_utilization`` is the share of host memory given to the KV
#: cache; vLLM's default (0.92) does not fit beside the server, 0.2 does.
CPU_MEMORY_UTILIZATION = 0.2
#: vLLM's switch between its model runners (adapters/vllm_compat.py defaults it to 0).
MODEL_RUNNER_ENV = "VLLM_USE_V2_MODEL_RUNNER"
#: Why corrigo refuses vLLM's V2 model runner.
V2_RUNNER_REFUSED = (
    "corrigo needs vLLM's V1 model runner: its corrections run inside the engine as a logits "
    "processor written to the V1 interface (vllm.v1.sample.logits_processor.LogitsProcessor), "
    "and the V2 runner loads only processors of its own, different interface "
    "(vllm.v1.worker.gpu.sample.logits_processor), so the engine would refuse corrigo's. "
    "What only the V2 runner offers is therefore unavailable (README: Scaling out)"
)
#: Engine arguments corrigo sets itself; the config may not override them. ``additional_config``
#: carries the deployment manifest to every engine process (adapters/manifest.py); vLLM then
#: holds corrigo's object there instead of a dict, so the vLLM flags that write into it (the
#: Mamba/KDA prefill and decode backend choices of some models) are refused too.
RESERVED_ENGINE_ARGS = {
    "model": "use [model] path",
    "served_model_name": "use [model] served_model_name",
    "logits_processors": "corrigo registers its own",
    "additional_config": "it carries corrigo's deployment manifest",
    "gdn_prefill_backend": "vLLM stores it in additional_config, which corrigo's manifest holds",
    "kda_prefill_backend": "vLLM stores it in additional_config, which corrigo's manifest holds",
    "kda_decode_backend": "vLLM stores it in additional_config, which corrigo's manifest holds",
}


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


def engine_args(
    model: ServedModel,
    engine: Mapping[str, Any],
    manifest: DeploymentManifest | None = None,
) -> AsyncEngineArgs:
    """vLLM engine arguments: the ``[engine]`` section passed through, validated by vLLM's own
    ``AsyncEngineArgs`` (unknown names and bad values are refused here, before any start-up),
    with the deployment ``manifest`` for the engine side."""
    check_model_runner(os.environ)
    reserved = sorted(RESERVED_ENGINE_ARGS.keys() & set(engine))
    if reserved:
        key = reserved[0]
        raise EngineConfigError(f"engine.{key} is set by corrigo ({RESERVED_ENGINE_ARGS[key]})")
    if engine.get("prefill_context_parallel_size", 1) != 1:
        raise EngineConfigError(
            "engine.prefill_context_parallel_size: corrigo's corrections do not support "
            "prefill context parallelism yet; leave it at 1 (tensor parallelism works)"
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
            additional_config=manifest if manifest is not None else DeploymentManifest(),
            **settings,
        )
    except (TypeError, ValueError) as exc:
        raise EngineConfigError(f"[engine] rejected by vLLM: {exc}") from None
    return args


def check_model_runner(environ: Mapping[str, str]) -> None:
    """Refuse ``VLLM_USE_V2_MODEL_RUNNER=1`` before vLLM sees it: with it, vLLM 0.33 on CUDA
    fails only when its front end loads corrigo's logits processor, and the CPU build while
    building its config, neither saying why."""
    value = environ.get(MODEL_RUNNER_ENV)
    if value is None or value.strip() == "0":
        return
    raise EngineConfigError(
        f"{MODEL_RUNNER_ENV}={value!r} is not supported: {V2_RUNNER_REFUSED}. "
        f"Unset it or set {MODEL_RUNNER_ENV}=0."
    )


def check_engine_args(args: AsyncEngineArgs):
    """Let vLLM validate the values (it builds its full config; nothing is loaded or started),
    so a bad ``[engine]`` setting fails at start-up with vLLM's own message. vLLM picks the V2
    model runner by itself for some settings (e.g. watermarking), whatever the environment says:
    refused here too. Returns that config (``VllmConfig``: defaults resolved, e.g.
    ``max_num_seqs`` and the dtype)."""
    if args.distributed_executor_backend == "ray" and not platform_runs_ray():
        # vLLM itself fails only in the engine process, after spawning it.
        raise EngineConfigError(
            "engine.distributed_executor_backend = 'ray': vLLM's Ray executor does not support "
            "Ray on this platform (its CPU backend); use 'mp' on one machine"
        )
    try:
        config = args.create_engine_config()
    except Exception as exc:
        raise EngineConfigError(f"[engine] rejected by vLLM: {exc}") from None
    if config.use_v2_model_runner:
        raise EngineConfigError(
            f"[engine] makes vLLM choose its V2 model runner: {V2_RUNNER_REFUSED}. "
            "Remove the setting that requires it."
        )
    return config


def start_engine(args: AsyncEngineArgs) -> AsyncLLM:
    """Start vLLM's engine core (a separate process) and connect to it. Blocks until ready."""
    logger.info("starting vLLM engine for %s", args.model)
    return AsyncLLM.from_engine_args(args)


def stop_engine(engine: AsyncLLM) -> None:
    """Shut the engine down, including its engine-core process (never leave it orphaned)."""
    engine.shutdown()
