"""The rest of what ``vllm serve`` routes, through vLLM's own serving objects: /tokenize,
/detokenize, /version, and /v1/load_lora_adapter and /v1/unload_lora_adapter where vLLM allows
them (``VLLM_ALLOW_RUNTIME_LORA_UPDATING``).

corrigo checks each request as it checks generation requests (server/openai_api.py): its API
keys (vLLM's ``--api-key`` leaves /tokenize open; corrigo does not), readiness, the per-key rate
limit, the body's size and shape, the model id (profiles resolve to the served model; LoRA
adapters are their own ids), then hands it to vLLM and records ``corrigo_requests`` and
``corrigo_request_duration_seconds`` under the route's name. None of these generates, so none
takes an admission slot. /version needs no key, like /health and /ready (which also name
vLLM's version).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel, TypeAdapter, ValidationError

from adapters.vllm_compat import (
    VLLM_VERSION,
    DetokenizeRequest,
    ErrorResponse,
    LoadLoRAAdapterRequest,
    TokenizeRequest,
    UnloadLoRAAdapterRequest,
    error_response_from_exception,
    runtime_lora_updating,
)

from .admission import RateLimiter
from .auth import client_id
from .config import LimitsConfig
from .errors import APIError, status_of
from .metrics import ServerMetrics
from .openapi import (
    DETOKENIZE_RESPONSES,
    LORA_RESPONSES,
    TOKENIZE_RESPONSES,
    DetokenizeBody,
    LoadLoRAAdapterBody,
    TokenizeBody,
    UnloadLoRAAdapterBody,
    VersionBody,
    request_body,
)
from .request_body import read_json
from .runtime import EngineRuntime

#: Each route's request model, as vLLM's own route reads the body.
_TOKENIZE = TypeAdapter(TokenizeRequest)
_DETOKENIZE = TypeAdapter(DetokenizeRequest)
_LOAD = TypeAdapter(LoadLoRAAdapterRequest)
_UNLOAD = TypeAdapter(UnloadLoRAAdapterRequest)


def build_vllm_router(
    runtime: EngineRuntime,
    limits: LimitsConfig,
    metrics: ServerMetrics,
    auth: Callable[[Request], None],
    rate_limiter: RateLimiter | None,
    corrigo_version: str,
) -> APIRouter:
    """The routes above; ``rate_limiter`` is the one the generation routes share."""
    router = APIRouter()
    authenticated = [Depends(auth)]

    @router.get("/version", responses={200: {"model": VersionBody}})
    async def version() -> JSONResponse:
        """vLLM's version, as ``vllm serve`` answers it, and corrigo's."""
        return JSONResponse({"version": VLLM_VERSION, "corrigo": corrigo_version})

    @router.post(
        "/tokenize",
        dependencies=authenticated,
        openapi_extra=request_body(TokenizeBody),
        responses=TOKENIZE_RESPONSES,
    )
    async def tokenize(raw: Request) -> Response:
        """A prompt's token ids, or chat messages' as the chat template renders them."""

        async def call(request: Any) -> Any:
            return await runtime.serving.serving_tokenization.create_tokenize(request, raw)

        return await _serve(raw, "tokenize", _TOKENIZE, call, names_model=True)

    @router.post(
        "/detokenize",
        dependencies=authenticated,
        openapi_extra=request_body(DetokenizeBody),
        responses=DETOKENIZE_RESPONSES,
    )
    async def detokenize(raw: Request) -> Response:
        """The text of token ids."""

        async def call(request: Any) -> Any:
            return await runtime.serving.serving_tokenization.create_detokenize(request, raw)

        return await _serve(raw, "detokenize", _DETOKENIZE, call, names_model=True)

    if runtime_lora_updating():

        @router.post(
            "/v1/load_lora_adapter",
            dependencies=authenticated,
            openapi_extra=request_body(LoadLoRAAdapterBody),
            responses=LORA_RESPONSES,
        )
        async def load_lora_adapter(raw: Request) -> Response:
            """Load a PEFT LoRA adapter from the server's filesystem as a new model id."""

            async def call(request: Any) -> Any:
                if not runtime.args.enable_lora:
                    raise APIError(
                        400,
                        "LoRA is not enabled on this server: start it with --enable-lora "
                        "([engine] enable_lora = true).",
                        param="lora_path",
                    )
                taken = {runtime.model.model_id, *runtime.catalog.profiles}
                if request.lora_name in taken:
                    raise APIError(
                        400,
                        f"'{request.lora_name[:256]}' is already a model id here (the served "
                        "model or a profile); name the adapter otherwise.",
                        param="lora_name",
                    )
                result = await runtime.serving.openai_serving_models.load_lora_adapter(request)
                if isinstance(result, ErrorResponse) and result.error.code >= 500:
                    # vLLM answers 500 for any adapter its engine cannot load (bad shapes,
                    # unknown target modules): the client's adapter, not the server, is at fault.
                    raise APIError(
                        400,
                        f"The adapter could not be loaded: {result.error.message}",
                        param="lora_path",
                    )
                return result

            return await _serve(raw, "load_lora_adapter", _LOAD, call)

        @router.post(
            "/v1/unload_lora_adapter",
            dependencies=authenticated,
            openapi_extra=request_body(UnloadLoRAAdapterBody),
            responses=LORA_RESPONSES,
        )
        async def unload_lora_adapter(raw: Request) -> Response:
            """Unload a LoRA adapter: its model id is unknown from then on."""

            async def call(request: Any) -> Any:
                return await runtime.serving.openai_serving_models.unload_lora_adapter(request)

            return await _serve(raw, "unload_lora_adapter", _UNLOAD, call)

    async def _serve(
        raw: Request,
        endpoint: str,
        model: TypeAdapter,
        call: Callable[[Any], Awaitable[Any]],
        *,
        names_model: bool = False,
    ) -> Response:
        """Check ``raw``, give vLLM's request object to ``call``, answer with its result (a
        model as JSON, a line of text, or its error as corrigo's OpenAI error)."""
        started, status, label = time.perf_counter(), 500, runtime.model.model_id
        try:
            if rate_limiter is not None:
                rate_limiter.check(client_id(raw))
            runtime.require_ready()
            body = await read_json(raw, limits)
            messages = body.get("messages")
            if isinstance(messages, list) and len(messages) > limits.max_messages:
                raise APIError(
                    400,
                    f"'messages' has {len(messages)} entries; this server allows at most "
                    f"{limits.max_messages}.",
                    param="messages",
                )
            if names_model:
                adapters = runtime.lora_adapters()
                label, _ = runtime.catalog.resolve(body.get("model"), adapters)
                if label not in adapters:
                    body["model"] = runtime.model.model_id  # a profile's is the served model
            request = _validated(model, body)
            try:
                result = await call(request)
            except APIError:
                raise
            except Exception as exc:  # vLLM's checks raise its own errors, as for generation
                result = error_response_from_exception(exc)
            if isinstance(result, ErrorResponse):
                runtime.require_ready()
                error = result.error
                raise APIError(int(error.code), error.message, param=error.param)
            status = 200
            if isinstance(result, BaseModel):
                return JSONResponse(result.model_dump())
            return PlainTextResponse(str(result))
        except Exception as exc:
            status = status_of(exc)
            raise
        finally:
            metrics.requests.labels(label, endpoint, str(status)).inc()
            metrics.request_duration.labels(label, endpoint).observe(time.perf_counter() - started)

    return router


def _validated(model: TypeAdapter, body: dict[str, Any]) -> Any:
    try:
        return model.validate_python(body)
    except ValidationError as exc:
        err = exc.errors()[0]
        # A union (tokenize: prompt or messages) puts the member's name first; drop it.
        loc = [str(p) for p in err["loc"] if not str(p).startswith("Tokenize")]
        param = ".".join(loc) or None
        raise APIError(400, f"Invalid '{param}': {err['msg']}", param=param) from None
    except Exception as exc:  # vLLM's own validators raise its errors
        error = error_response_from_exception(exc).error
        raise APIError(int(error.code), error.message, param=error.param) from None
