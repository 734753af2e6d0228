"""Whether the auxiliary models and copilots fit beside the engine, decided before it starts.

The engine process loads every auxiliary model and copilot in its logits processor, which vLLM
builds with its model runner: after the worker's start-up memory snapshot on a GPU, before it
sizes its own KV cache on the CPU. So where vLLM sizes its KV cache from
``gpu_memory_utilization`` (the default), it counts their *weights* as its own use and gives
itself that much less KV cache; their KV caches and activations, allocated on the first steps
that use them, come on top, outside vLLM's share. Where ``kv_cache_memory_bytes`` fixes vLLM's
KV cache, nothing of theirs is counted. What is outside must fit in what vLLM leaves:

- CUDA, each GPU: ``(1 - gpu_memory_utilization) x device memory - CUDA_RESERVE``. vLLM's share
  is a fraction of the device's total; the CUDA context, cuBLAS handles and NCCL buffers of the
  worker are created before its snapshot and come out of the rest too. With
  ``kv_cache_memory_bytes`` vLLM's use is known only once it has loaded and profiled, so the
  budget must then be given (``[aux_memory] budget_bytes``), as it must where the GPUs are not
  visible from the server (Ray workers on other nodes).
- CPU, this host: the memory available now (the cgroup's limit included) less what the engine
  will take: ``workers x gpu_memory_utilization x host memory`` (each CPU worker's share) or
  ``workers x kv_cache_memory_bytes + the served model's weights``, less
  ``CPU_PROCESS_RESERVE`` for each engine process (the engine core and each worker). Only the
  output rank loads them (adapters/tensor_parallel.py): their need counts once. Proxy-tuning's
  models run in worker processes of their own there (decoding/aux/remote.py): vLLM's share
  counts none of their weights, and each worker needs ``AUX_WORKER_RESERVE`` beside them.

:func:`check_fits` is the pure decision; :func:`engine_memory` reads the figures.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

from decoding.aux.dtypes import AuxDType, cpu_has_native_bf16, dtype_name, resolve_aux_dtype
from decoding.aux.packed import packs

from .aux_memory import Footprint, ModelShape, estimate, model_shape
from .vllm_compat import device_memory, platform_kind

#: Device memory a CUDA worker uses outside vLLM's share: its CUDA context (about 0.5 GiB on
#: recent GPUs with lazily loaded kernels), cuBLAS handles and, with tensor parallelism, NCCL
#: buffers. Not measured here (no GPU); bench/aux_streams_check.py prints the context's size.
CUDA_RESERVE = 1 << 30
#: Host memory each engine process (vLLM's engine core, each CPU worker) takes beyond weights
#: and KV cache: 0.55 and 0.6 GiB (proportional set size) measured on the CPU build.
CPU_PROCESS_RESERVE = 768 << 20
#: Host memory each auxiliary model's worker process on the CPU (decoding/aux/remote.py) takes
#: beyond its weights, caches and activations: Python, torch and transformers, 0.31 GiB
#: (anonymous) measured, plus its share of the libraries' pages.
AUX_WORKER_RESERVE = 512 << 20

GiB = 1 << 30
NOTHING_DECLARED = "no auxiliary models or copilots declared"


class AuxMemoryError(ValueError):
    """The auxiliary models cannot be shown to fit beside the engine; the message says why and
    what to change."""


@dataclass(frozen=True)
class EngineMemory:
    """What the engine will take where the auxiliary models run, as known before it starts."""

    platform: str  # "cuda", "cpu", or another of vLLM's platforms
    rows: int  # max_num_seqs
    tokens: int  # max_model_len
    dtype: str  # the engine's resolved dtype
    utilization: float  # gpu_memory_utilization
    kv_cache_bytes: int | None  # kv_cache_memory_bytes
    workers: int  # engine workers (tensor x pipeline parallel ranks)
    #: CUDA: the smallest of the workers' devices; None: not visible from this process.
    device_bytes: int | None = None
    #: CPU: memory available on this host now, and its total.
    host_available: int | None = None
    host_total: int | None = None
    #: CPU with ``kv_cache_bytes``: the served model's weights in the engine's dtype.
    engine_weights: int = 0


@dataclass(frozen=True)
class Budget:
    bytes: int
    #: Whether vLLM counts the auxiliary weights in its own share (then they are not needed
    #: from the budget).
    weights_counted: bool
    where: str  # "on each GPU" / "on this host"
    derivation: str  # how ``bytes`` was found, with the figures


@dataclass(frozen=True)
class Declared:
    """An auxiliary model or copilot as the config declares it."""

    label: str  # its config key: "aux_models.NAME" or "copilots.NAME"
    shape: ModelShape
    dtype: AuxDType


def _gib(n: float) -> str:
    """``n`` bytes for people: GiB with one decimal, MiB below 1 GiB."""
    return f"{n / GiB:.1f} GiB" if abs(n) >= GiB else f"{n / (1 << 20):.0f} MiB"


def budget(engine: EngineMemory, override: int | None) -> Budget:
    """The memory the auxiliary models may use beyond what vLLM counts (module docstring)."""
    counted = engine.kv_cache_bytes is None and engine.platform in ("cuda", "cpu")
    where = "on this host" if engine.platform == "cpu" else "on each GPU"
    if override is not None:
        return Budget(override, counted, where, "aux_memory.budget_bytes")
    if engine.platform == "cuda":
        if engine.kv_cache_bytes is not None:
            raise AuxMemoryError(
                "cannot size the auxiliary models' memory: with engine.kv_cache_memory_bytes "
                "vLLM takes what its model and profile need beside that KV cache, known only "
                "once it has started; set aux_memory.budget_bytes to the GPU memory the "
                "auxiliary models may use (their weights, KV caches and activations)"
            )
        if engine.device_bytes is None:
            raise AuxMemoryError(
                "cannot size the auxiliary models' memory: the engine's GPUs are not visible "
                "from this process (Ray workers on other nodes?); set aux_memory.budget_bytes "
                "to the memory each GPU has for them beside vLLM's share"
            )
        left = int((1 - engine.utilization) * engine.device_bytes) - CUDA_RESERVE
        derivation = (
            f"(1 - engine.gpu_memory_utilization {engine.utilization}) x "
            f"{_gib(engine.device_bytes)} - {_gib(CUDA_RESERVE)} for the CUDA context"
        )
        return Budget(left, True, where, derivation)
    if engine.platform == "cpu":
        assert engine.host_available is not None and engine.host_total is not None
        processes = 1 + engine.workers
        reserve = processes * CPU_PROCESS_RESERVE
        if engine.kv_cache_bytes is None:
            share = int(engine.workers * engine.utilization * engine.host_total)
            taken = (
                f"{engine.workers} worker(s) x engine.gpu_memory_utilization "
                f"{engine.utilization} x {_gib(engine.host_total)}"
            )
        else:
            share = engine.workers * engine.kv_cache_bytes + engine.engine_weights
            taken = (
                f"{engine.workers} worker(s) x engine.kv_cache_memory_bytes "
                f"{_gib(engine.kv_cache_bytes)} - {_gib(engine.engine_weights)} of the served "
                "model's weights"
            )
        derivation = (
            f"{_gib(engine.host_available)} available - {taken} - {processes} engine "
            f"processes x {_gib(CPU_PROCESS_RESERVE)}"
        )
        return Budget(engine.host_available - share - reserve, counted, where, derivation)
    raise AuxMemoryError(
        f"cannot size the auxiliary models' memory on vLLM's {engine.platform} platform; set "
        "aux_memory.budget_bytes to the memory they may use on each device"
    )


def _in_worker(declared: Declared, engine: EngineMemory) -> bool:
    """Whether the model runs in a worker process of its own (proxy-tuning's models on the CPU,
    decoding/proxy_tuning/correction.py), where vLLM's share cannot count its weights."""
    return engine.platform == "cpu" and declared.label.startswith("aux_models.")


def _need(footprints: Sequence[tuple[Footprint, bool]], weights_counted: bool) -> int:
    """Bytes needed beyond vLLM's share: each ``(footprint, in a worker process)``."""
    return sum(
        f.peak
        - (f.weights if weights_counted and not worker else 0)
        + (AUX_WORKER_RESERVE if worker else 0)
        for f, worker in footprints
    )


def check_fits(
    declared: Sequence[Declared], engine: EngineMemory, override: int | None, native_bf16: bool
) -> str:
    """Raise :class:`AuxMemoryError` unless the declared models' estimated peak fits in the
    budget; returns a line for the start-up log."""
    if not declared:
        return NOTHING_DECLARED
    room = budget(engine, override)
    dtypes = {
        d.label: resolve_aux_dtype(
            d.dtype, engine_dtype=engine.dtype, device_type=engine.platform, native_bf16=native_bf16
        )
        for d in declared
    }

    packed = {label: packs(engine.platform, dtype) for label, dtype in dtypes.items()}

    worker = {d.label: _in_worker(d, engine) for d in declared}

    def need(rows: int) -> int:
        footprints = [
            (
                estimate(d.shape, dtypes[d.label], rows, engine.tokens, packed=packed[d.label]),
                worker[d.label],
            )
            for d in declared
        ]
        return _need(footprints, room.weights_counted)

    needed = need(engine.rows)
    summary = (
        f"auxiliary models and copilots: {_gib(needed)} needed {room.where} beside the engine "
        f"for {engine.rows} rows of {engine.tokens} tokens, {_gib(room.bytes)} left "
        f"({room.derivation})"
    )
    if needed <= room.bytes:
        return summary
    lines = [
        f"the auxiliary models and copilots do not fit beside the engine: they need "
        f"{_gib(needed)} {room.where} at their peak, for engine.max_num_seqs = {engine.rows} "
        f"rows of engine.max_model_len = {engine.tokens} tokens, and {_gib(room.bytes)} is left "
        f"there ({room.derivation})."
    ]
    for d in declared:
        f = estimate(d.shape, dtypes[d.label], engine.rows, engine.tokens, packed=packed[d.label])
        counted = room.weights_counted and not worker[d.label]
        weights = "" if counted else f", weights {_gib(f.weights)}"
        process = f", worker process {_gib(AUX_WORKER_RESERVE)}" if worker[d.label] else ""
        lines.append(
            f"  {d.label} ({dtypes[d.label]}): KV cache {_gib(f.layout)}, activations "
            f"{_gib(f.transient + f.workspace)}{weights}{process}"
        )
    if room.weights_counted and not all(worker.values()):
        weights = sum(
            estimate(d.shape, dtypes[d.label], 1, 1, packed=packed[d.label]).weights
            for d in declared
            if not worker[d.label]
        )
        lines.append(
            f"  (their weights, {_gib(weights)}, are not in this figure: vLLM counts them in "
            "its own share, and its KV cache is that much smaller)"
        )
    fit = _most_rows(need, room.bytes, engine.rows)
    rows = f"at most {fit} rows fit" if fit else "not one row fits at this engine.max_model_len"
    share = (
        "lower engine.gpu_memory_utilization"
        if engine.kv_cache_bytes is None
        else "lower engine.kv_cache_memory_bytes"
    )
    lines.append(
        f"Lower engine.max_num_seqs ({rows}) or engine.max_model_len, {share}, run an "
        "auxiliary model or copilot in a smaller dtype ([aux_models.NAME] / [copilots.NAME] "
        "dtype), or, if you know the memory is there, set aux_memory.budget_bytes "
        '(docs/deployment.md, "Memory budgeting for auxiliary models").'
    )
    raise AuxMemoryError("\n".join(lines))


def _most_rows(need, room: int, rows: int) -> int:
    """The largest ``n <= rows`` with ``need(n) <= room`` (0 if none); ``need`` grows with n."""
    low, high = 0, rows
    while low < high:
        mid = (low + high + 1) // 2
        if need(mid) <= room:
            low = mid
        else:
            high = mid - 1
    return low


def engine_memory(vllm_config, served_path: str) -> EngineMemory:
    """The figures :func:`budget` needs, from vLLM's resolved config (``create_engine_config``)
    and this host."""
    platform = platform_kind()
    cache = vllm_config.cache_config
    workers = vllm_config.parallel_config.world_size
    engine = EngineMemory(
        platform=platform,
        rows=vllm_config.scheduler_config.max_num_seqs,
        tokens=vllm_config.model_config.max_model_len,
        dtype=dtype_name(vllm_config.model_config.dtype),
        utilization=cache.gpu_memory_utilization,
        kv_cache_bytes=cache.kv_cache_memory_bytes,
        workers=workers,
    )
    if platform == "cuda":
        sizes = [device_memory(i) for i in range(workers)]
        return dataclasses.replace(engine, device_bytes=None if None in sizes else min(sizes))
    if platform == "cpu":
        weights = 0
        if cache.kv_cache_memory_bytes is not None:
            weights = estimate(model_shape(served_path), engine.dtype, 1, 1).weights
        memory = psutil.virtual_memory()
        return dataclasses.replace(
            engine,
            host_available=min(memory.available, _cgroup_room()),
            host_total=memory.total,
            engine_weights=weights,
        )
    return engine


def _cgroup_room(root: Path = Path("/sys/fs/cgroup")) -> int:
    """What this process's cgroup (v2) and its ancestors still allow; unbounded without one."""
    room = 1 << 62
    try:
        line = next(
            x for x in Path("/proc/self/cgroup").read_text().splitlines() if x.startswith("0::")
        )
    except (OSError, StopIteration):
        return room
    folder = root / line[3:].lstrip("/")
    while True:
        try:
            limit = (folder / "memory.max").read_text().strip()
            used = int((folder / "memory.current").read_text())
            if limit != "max":
                room = min(room, int(limit) - used)
        except (OSError, ValueError):
            pass
        if folder == root or root not in folder.parents:
            return room
        folder = folder.parent


def check_aux_memory(
    declared: Sequence[Declared], vllm_config, served_path: str, override: int | None
) -> str:
    """:func:`check_fits` with this host's figures: raises :class:`AuxMemoryError`, or returns
    the start-up log line."""
    if not declared:
        return NOTHING_DECLARED
    engine = engine_memory(vllm_config, served_path)
    return check_fits(declared, engine, override, cpu_has_native_bf16())
