"""Compute dtypes: whether this host's CPU computes bf16 natively, and the dtype an auxiliary
model or copilot runs in (``[aux_models.NAME] dtype``, ``[copilots.NAME] dtype``).

No torch here: the config imports :data:`AuxDType`, and dtypes travel as their torch names
(``"bfloat16"``; ``getattr(torch, name)`` gives the dtype).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, get_args

#: CPU features that make bf16 matmuls native; without them (e.g. AVX2-only hosts) vLLM's CPU
#: kernels emulate bf16 and decode ~3.5x slower at batch 8 than in float32 (measured:
#: SmolLM2-135M eager, 27 vs 97 tok/s on a 2-core AVX2 machine).
BF16_CPU_FLAGS = {"avx512_bf16", "amx_bf16"}

#: What an auxiliary model's or copilot's ``dtype`` may say; "auto" is resolved by
#: :func:`resolve_aux_dtype`.
AuxDType = Literal["auto", "float32", "bfloat16", "float16"]
AUX_DTYPES: tuple[str, ...] = get_args(AuxDType)
#: Bytes per element of each concrete dtype.
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


def cpu_bf16_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> list[str] | None:
    """The :data:`BF16_CPU_FLAGS` this host's CPU has, sorted; None where it cannot be read."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return None
    flags = next(
        (line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")),
        [],
    )
    return sorted(BF16_CPU_FLAGS & set(flags))


def cpu_has_native_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether this host's CPU computes bf16 natively (assumed so where it cannot be read)."""
    flags = cpu_bf16_flags(cpuinfo)
    return flags is None or bool(flags)


def dtype_name(dtype: object) -> str:
    """``torch.bfloat16`` (or ``"bfloat16"``) -> ``"bfloat16"``."""
    return str(dtype).removeprefix("torch.")


def resolve_aux_dtype(
    setting: AuxDType, *, engine_dtype: str, device_type: str, native_bf16: bool
) -> str:
    """The dtype an auxiliary model (or copilot) loads in.

    An explicit setting is kept. "auto" follows the engine: on a GPU, the engine's own dtype
    (vLLM's resolved ``model_config.dtype``), so an auxiliary forward reads half the bytes of a
    float32 one on a memory-bound step, as the engine's does. On the CPU, bf16 only where the
    engine runs bf16 *and* the CPU computes it natively; otherwise float32: without native
    support torch converts each bf16 operand to float32 and back, so a bf16 forward costs more
    than a float32 one and saves only memory (corrigo already runs the engine itself in float32
    on such hosts, adapters/engine.py), and the CPU has no fast float16 path at all.
    """
    if setting != "auto":
        return setting
    engine = dtype_name(engine_dtype)
    if engine not in DTYPE_BYTES:
        raise ValueError(f"the engine's dtype {engine} is not one auxiliary models can run in")
    if device_type == "cpu":
        return "bfloat16" if engine == "bfloat16" and native_bf16 else "float32"
    return engine
