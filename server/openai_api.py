"""The OpenAI-compatible routes: /v1/models, /v1/chat/completions, /v1/completions,
/v1/responses.

corrigo reads and checks each request itself (auth, readiness, size, JSON, model, limits, the
``correction`` object), then hands it to vLLM's own serving classes, which render chat
templates, run the engine and format responses and SSE chunks exactly as ``vllm serve`` does.
On the way back it adds the ``correction`` report and records corrigo_* metrics.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import ValidationError

from adapters.vllm_compat import (
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionRequest,
    CompletionResponse,
    ErrorResponse,
    ResponsesRequest,
    ResponsesResponse,
    error_response_from_exception,
)
from decoding.params import RequestRefused
from decoding.pipeline import FORCED_STOPS, PIPELINE
from decoding.unlearning.policy import CONTENT_FILTER

from .admission import AdmissionControl, RateLimiter, Slot
from .admission import rate_limiter as make_rate_limiter
from .auth import client_id
from .cancellation import CancelScope
from .config import LimitsConfig
from .corrections import correction_report, take_correction, wants_figures, wire_xargs
from .errors import APIError, status_of
from .exchange import CLIENT_CLOSED, Endpoint, Exchange
from .metrics import ServerMetrics
from .openapi import (
    CHAT_RESPONSES,
    COMPLETION_RESPONSES,
    RESPONSES_RESPONSES,
    ChatCompletionBody,
    CompletionBody,
    ResponsesBody,
    error_responses,
    request_body,
)
from .refinement.driver import RefinementDriver
from .request_body import read_json
from .runtime import EngineRuntime
from .unlearning_refusal import refusal
from .vllm_errors import from_vllm_error


def build_router(
    runtime: EngineRuntime,
    limits: LimitsConfig,
    metrics: ServerMetrics,
    auth,
    refinement: RefinementDriver | None = None,
    rate_limiter: RateLimiter | None = None,
) -> APIRouter:
    """The /v1 generation routes and /v1/models. ``rate_limiter``: the server's per-key limit,
    shared with its other routes (server/vllm_routes.py); default: one of ``limits``' own."""
    router = APIRouter(prefix="/v1", dependencies=[Depends(auth)])
    admission = AdmissionControl(limits.max_running_requests, limits.max_waiting_requests)
    metrics.requests_running.set_function(lambda: admission.running)
    metrics.requests_waiting.set_function(lambda: admission.waiting)
    if rate_limiter is None:
        rate_limiter = make_rate_limiter(limits.requests_per_minute, limits.rate_limit_burst)

    @router.get("/models", responses=error_responses(401, 503))
    async def list_models() -> Response:
        runtime.require_ready()
        models = (await runtime.serving.openai_serving_models.show_available_models()).model_dump()
        base, *adapters = models["data"]  # vLLM lists the served model, then LoRA adapters
        public = runtime.catalog.base_public
        parent = base["id"] if public else None
        profiles = [
            {**base, "id": name, "owned_by": "corrigo", "parent": parent, "permission": []}
            for name in runtime.catalog.profiles
        ]
        models["data"] = [base, *adapters, *profiles] if public else profiles
        return JSONResponse(models)

    @router.post(
        "/chat/completions",
        openapi_extra=request_body(ChatCompletionBody),
        responses=CHAT_RESPONSES,
    )
    async def chat_completions(raw: Request) -> Response:
        return await _generate(raw, Endpoint.CHAT)

    @router.post(
        "/completions", openapi_extra=request_body(CompletionBody), responses=COMPLETION_RESPONSES
    )
    async def completions(raw: Request) -> Response:
        return await _generate(raw, Endpoint.COMPLETION)

    @router.post(
        "/responses", openapi_extra=request_body(ResponsesBody), responses=RESPONSES_RESPONSES
    )
    async def responses(raw: Request) -> Response:
        return await _generate(raw, Endpoint.RESPONSES)

    async def _generate(raw: Request, endpoint: Endpoint) -> Response:
        ex = Exchange(endpoint, request_id=raw.headers.get("x-request-id"))
        slot: Slot | None = None
        try:
            # The limit counts every attempt, also while the engine starts.
            if rate_limiter is not None:
                rate_limiter.check(client_id(raw))
            runtime.require_ready()
            request = await _parse(raw, ex)
            refine = ex.correction is not None and ex.correction.refinement is not None
            if refine:
                if endpoint is not Endpoint.CHAT or refinement is None:
                    raise APIError(
                        400,
                        "correction.refinement is served on /v1/chat/completions only: it "
                        "regenerates whole chat answers.",
                        param="correction.refinement",
                    )
                refinement.check(request)
            scope = CancelScope.for_request(raw)
            try:
                slot = await scope.run(admission.acquire())
                if slot is None or not await _admitted(request, ex, scope):
                    return _client_closed(ex)  # the client went away while waiting
                if ex.answer is not None:
                    refine = False  # answered without generation (_call_vllm): nothing to refine
                if request.stream:
                    scope.close()  # from here the streaming response watches the client
                    if refine:
                        events = refinement.stream(request, ex, _record)
                        response = _SlotStreamingResponse(
                            events, slot=slot, media_type="text/event-stream"
                        )
                    else:
                        response = await _stream(raw, request, ex, slot)
                    slot = None  # released by the response when it ends
                    return response
                if refine:
                    return await refinement.complete(request, ex, scope, _record)
                return await _complete(raw, request, ex, scope)
            finally:
                scope.close()
        except Exception as exc:
            ex.status = status_of(exc)
            _record(ex)
            raise
        finally:
            if slot is not None:
                slot.release()

    def _client_closed(ex: Exchange) -> Response:
        ex.status = CLIENT_CLOSED
        _record(ex)
        return Response(status_code=CLIENT_CLOSED)

    async def _parse(
        raw: Request, ex: Exchange
    ) -> ChatCompletionRequest | CompletionRequest | ResponsesRequest:
        body = await read_json(raw, limits)
        _check_input_size(body, limits)
        adapters = runtime.lora_adapters()
        ex.model, ex.profile = runtime.catalog.resolve(body.get("model"), adapters)
        if ex.model not in adapters:
            body["model"] = runtime.model.model_id  # the engine serves a profile's base model
        defaults = ex.profile.correction if ex.profile is not None else None
        enforced = ex.profile.enforced if ex.profile is not None else frozenset()
        ex.correction = take_correction(
            body, runtime.registry, runtime.correction_context, defaults, enforced
        )
        if ex.endpoint is Endpoint.RESPONSES:
            _check_responses_request(body, ex, runtime.admissions)
        elif body.get("stream") is True:
            # corrigo counts generated tokens from vLLM's final usage chunk, so it always asks
            # for one, and drops it again when the client did not.
            options = body.get("stream_options")
            options = dict(options) if isinstance(options, dict) else {}
            # vLLM's --enable-force-include-usage: every stream keeps its usage chunk.
            force = getattr(runtime.frontend, "enable_force_include_usage", False)
            ex.client_wants_usage = bool(options.get("include_usage")) or force
            body["stream_options"] = {**options, "include_usage": True}
        try:
            request = ex.endpoint.request_model.model_validate(body)
        except ValidationError as exc:
            err = exc.errors()[0]
            param = ".".join(str(p) for p in err["loc"]) or None
            raise APIError(400, f"Invalid '{param}': {err['msg']}", param=param) from None
        except Exception as exc:  # vLLM's own validators raise its errors (VLLMValidationError)
            raise from_vllm_error(error_response_from_exception(exc), ex.endpoint) from None
        _check_limits(request, limits)
        if getattr(request, "use_beam_search", False) and ex.correction and ex.correction.steps:
            # vLLM's beam search drops vllm_xargs: the corrections would silently not run.
            raise APIError(
                400,
                "Per-step corrections cannot be combined with use_beam_search: vLLM's beam "
                "search does not pass them to the engine. Send one or the other.",
                param="use_beam_search",
                code="unsupported_combination",
            )
        # Only the admission steps' cheap checks here (the unlearning gate's embedding waits for
        # an admission slot: _admitted).
        for name, step in runtime.admissions.items():
            if ex.correction is not None and name in ex.correction.steps:
                try:
                    ex.prepared[name] = step.prepare(ex.correction.steps[name], body)
                except RequestRefused as exc:
                    raise APIError.refused(exc) from None
        return request

    async def _admitted(request, ex: Exchange, scope: CancelScope) -> bool:
        """Once the request holds a slot: the admission steps (the unlearning gate), then the
        correction's wiring. False when the client went away meanwhile."""
        for name, prepared in ex.prepared.items():
            assert ex.correction is not None
            params = ex.correction.steps[name]
            try:
                admitted = await scope.run(runtime.admissions[name].admit(params, prepared))
            except RequestRefused as exc:
                raise APIError.refused(exc) from None
            if admitted is None:
                return False
            ex.correction = ex.correction.with_step(name, admitted.params)
            ex.admitted[name] = admitted
        if wants_figures(ex.correction, runtime.registry):
            ex.ticket = runtime.reports.take()
        request.vllm_xargs = wire_xargs(ex.correction, request.vllm_xargs, ex.ticket)
        return True

    async def _report(ex: Exchange) -> dict[str, Any]:
        assert ex.correction is not None
        figures = None
        if ex.ticket is not None:  # once the figures of every step it saw tokens of are in
            figures = await runtime.reports.settled(ex.ticket, ex.completion_tokens)
        details = {
            name: runtime.admissions[name].report(
                admitted, figures.get(name) if figures is not None else None
            )
            for name, admitted in ex.admitted.items()
        }
        return correction_report(ex.correction, runtime.registry, figures, **details)

    async def _complete(raw: Request, request, ex: Exchange, scope: CancelScope) -> Response:
        result = await scope.run(_call_vllm(raw, request, ex))
        if result is None:  # the client went away; vLLM aborted the generation
            return _client_closed(ex)
        if isinstance(result, ErrorResponse):
            runtime.require_ready()  # the engine died under it: 503, not vLLM's 500
            if not await _exhausted(ex):
                raise from_vllm_error(result, ex.endpoint)
            # The corrections left a grammar no token (README, Composition rules).
            serving = (
                runtime.serving.openai_serving_chat
                if ex.endpoint is Endpoint.CHAT
                else runtime.serving.openai_serving_completion
            )
            result = await refusal(serving, request, runtime.model.model_id, "")
            if isinstance(result, ErrorResponse):
                raise from_vllm_error(result, ex.endpoint)
        if isinstance(result, ResponsesResponse):
            payload = result.model_dump(mode="json", by_alias=True)  # as vLLM's route sends it
            ex.completion_tokens = result.usage.output_tokens if result.usage else 0
        else:
            assert isinstance(result, (ChatCompletionResponse, CompletionResponse))
            payload = result.model_dump()
            ex.completion_tokens = result.usage.completion_tokens if result.usage else 0
        if ex.profile is not None:
            payload["model"] = ex.profile.name
        if ex.correction is not None:
            payload["correction"] = await _report(ex)
        _record(ex)
        return JSONResponse(payload)

    async def _stream(raw: Request, request, ex: Exchange, slot: Slot) -> Response:
        result = await _call_vllm(raw, request, ex)
        if isinstance(result, ErrorResponse):
            runtime.require_ready()
            raise from_vllm_error(result, ex.endpoint)
        if ex.endpoint is Endpoint.RESPONSES:
            events = _relay_events(result, ex)
        else:
            events = _relay(result, ex, request.n or 1)
        return _SlotStreamingResponse(events, slot=slot, media_type="text/event-stream")

    async def _exhausted(ex: Exchange) -> bool:
        """Whether the request's corrections left a row no token the engine allowed, so that
        the pipeline forced its stop token (decoding/pipeline.py): under a grammar that cannot
        end there, vLLM then ends the request with an error, which corrigo answers as
        ``finish_reason = "content_filter"``. Waits briefly for the step's figures, which
        travel beside the engine's output."""
        if ex.correction is None or ex.ticket is None or ex.endpoint is Endpoint.RESPONSES:
            return False
        figures = await runtime.reports.settled(ex.ticket, 1, timeout=EXHAUSTED_WAIT_SECONDS)
        return figures.get(PIPELINE, {}).get(FORCED_STOPS, 0) > 0

    def _content_filter_chunk(first: dict[str, Any], ex: Exchange, n: int) -> str:
        """The last chunk of a stream whose corrections exhausted a grammar: every choice
        ends with ``finish_reason = "content_filter"`` (what it streamed so far stands)."""
        finish = {"delta": {}} if ex.endpoint is Endpoint.CHAT else {"text": ""}
        return _chunk(
            first,
            ex,
            [
                {"index": i, **finish, "logprobs": None, "finish_reason": CONTENT_FILTER}
                for i in range(n)
            ],
        )

    async def _relay_events(events: AsyncIterator[Any], ex: Exchange) -> AsyncIterator[str]:
        """vLLM's Responses stream events as SSE, as vLLM's own route sends them; the final
        event's ``response`` carries the correction report (and a profile's name)."""
        status = CLIENT_CLOSED  # unless the stream reaches its final event
        started = False
        try:
            async for event in events:
                if not started:
                    started = True
                    metrics.time_to_first_token.labels(ex.model, ex.endpoint.value).observe(
                        time.perf_counter() - ex.started
                    )
                data = event.model_dump(mode="json", by_alias=True)
                kind = data.get("type", "unknown")
                response = data.get("response")
                if isinstance(response, dict):
                    if ex.profile is not None:
                        response["model"] = ex.profile.name
                    if kind in FINAL_RESPONSE_EVENTS:
                        usage = response.get("usage") or {}
                        ex.completion_tokens = usage.get("output_tokens") or 0
                        if ex.correction is not None:
                            response["correction"] = await _report(ex)
                        status = 200
                elif kind == "error":
                    status = 500
                yield f"event: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"
        finally:
            ex.status = status
            _record(ex)

    async def _relay(chunks: AsyncIterator[str], ex: Exchange, n: int) -> AsyncIterator[str]:
        # Chunks name the engine's model; a profile request sees its profile's name instead.
        rename = None
        if ex.profile is not None:
            rename = (
                f'"model":{json.dumps(runtime.model.model_id)}',
                f'"model":{json.dumps(ex.profile.name)}',
            )
        first: dict[str, Any] | None = None
        finished = False
        try:
            async for chunk in chunks:
                if rename is not None:
                    chunk = chunk.replace(*rename, 1)
                if first is None:
                    metrics.time_to_first_token.labels(ex.model, ex.endpoint.value).observe(
                        time.perf_counter() - ex.started
                    )
                    # The report chunk reuses the stream's id; only parsed when one is due.
                    first = (_sse_json(chunk) if ex.correction is not None else None) or {}
                if chunk.startswith('data: {"error"') and await _exhausted(ex):
                    chunk = _content_filter_chunk(first, ex, n)
                if chunk.startswith("data: [DONE]"):
                    finished = True
                    if ex.correction is not None:
                        yield await _report_chunk(first, ex)
                elif '"usage":{' in chunk:
                    usage = (_sse_json(chunk) or {}).get("usage") or {}
                    ex.completion_tokens = usage.get("completion_tokens", ex.completion_tokens)
                    if not ex.client_wants_usage and '"choices":[]' in chunk:
                        continue
                yield chunk
        finally:
            # A stream cut short by the client never reaches [DONE].
            ex.status = 200 if finished else CLIENT_CLOSED
            _record(ex)

    async def _report_chunk(first: dict[str, Any], ex: Exchange) -> str:
        assert ex.correction is not None
        return _chunk(first, ex, [], correction=await _report(ex))

    def _chunk(first: dict[str, Any], ex: Exchange, choices: list, **extra: Any) -> str:
        """An SSE chunk of corrigo's own in the stream's shape (its id, object, created and
        model, from the stream's ``first`` chunk)."""
        chunk = {
            "id": first.get("id"),
            "object": ex.endpoint.chunk_object,
            "created": first.get("created"),
            "model": first.get("model", ex.model),
            "choices": choices,
            **extra,
        }
        return f"data: {json.dumps(chunk, separators=(',', ':'))}\n\n"

    async def _call_vllm(raw: Request, request, ex: Exchange):
        """vLLM's serving call: a response, an SSE chunk iterator, or an ErrorResponse
        (exceptions it raises for bad requests are turned into one, as ``vllm serve`` does).
        A request an admission step answers (the unlearning gate's refusal) gets that answer in
        the same shapes instead."""
        chat = ex.endpoint is Endpoint.CHAT
        if ex.endpoint is Endpoint.RESPONSES:
            responses = runtime.serving.openai_serving_responses
            if responses is None:
                raise APIError(400, "The served model does not support the Responses API.")
            try:
                return await responses.create_responses(request, raw)
            except Exception as exc:
                return error_response_from_exception(exc)
        serving = (
            runtime.serving.openai_serving_chat
            if chat
            else runtime.serving.openai_serving_completion
        )
        try:
            if ex.answer is not None:
                return await refusal(serving, request, runtime.model.model_id, ex.answer)
            if chat:
                return await serving.create_chat_completion(request, raw)
            return await serving.create_completion(request, raw)
        except Exception as exc:
            return error_response_from_exception(exc)

    def _record(ex: Exchange) -> None:
        if ex.ticket is not None:
            runtime.reports.give_back(ex.ticket)
            ex.ticket = None
        model = ex.model or "unknown"
        metrics.requests.labels(model, ex.endpoint.value, str(ex.status)).inc()
        metrics.request_duration.labels(model, ex.endpoint.value).observe(
            time.perf_counter() - ex.started
        )
        if ex.completion_tokens:
            metrics.generated_tokens.labels(model, ex.endpoint.value).inc(ex.completion_tokens)
        if ex.correction is not None and ex.status == 200:
            for name in ex.correction.names:
                metrics.plugin_requests.labels(name).inc()

    return router


#: Longest an answer that vLLM ended with an error waits for the figures saying whether the
#: corrections exhausted the row (they are sent before the step's token: normally already in).
EXHAUSTED_WAIT_SECONDS = 2.0
#: Responses stream events that end a response, carrying its usage (vLLM's ResponsesResponse).
FINAL_RESPONSE_EVENTS = frozenset({"response.completed", "response.incomplete", "response.failed"})


def _check_responses_request(
    body: dict[str, Any], ex: Exchange, admissions: Mapping[str, Any]
) -> None:
    """What /v1/responses cannot serve in corrigo, refused naming the field: background
    responses (they outlive the request, its admission slot and its report), and corrections
    whose admission step applies to the request (the unlearning gate, per-model prompts: they
    read chat and completion requests' text, not a Responses ``input``, and would be
    skipped)."""
    if body.get("background") is True:
        raise APIError(
            400,
            "'background' responses are not served: corrigo answers each response within its "
            "request (admission, corrections and their report follow it).",
            param="background",
        )
    steps = ex.correction.steps if ex.correction else {}
    gated = sorted(
        name
        for name, params in steps.items()
        if name in admissions and admissions[name].applies(params)
    )
    if gated:
        raise APIError(
            400,
            f"correction.{gated[0]} is served on /v1/chat/completions and /v1/completions "
            "only: its admission step reads those requests' text.",
            param=f"correction.{gated[0]}",
            code="unsupported_combination",
        )


def _check_limits(
    request: ChatCompletionRequest | CompletionRequest | ResponsesRequest, limits: LimitsConfig
) -> None:
    """The server's caps on counts, read from the validated request: a count sent as a
    string or a float (``"n": "100000"``, ``16.0``) is checked as the integer vLLM made of it."""
    n = getattr(request, "n", None)
    if n is not None and n > limits.max_n:
        raise APIError(400, f"'n' is {n}; this server allows at most {limits.max_n}.", param="n")
    if limits.max_tokens is not None:
        for name in ("max_tokens", "max_completion_tokens", "max_output_tokens"):
            value = getattr(request, name, None)
            if value is not None and value > limits.max_tokens:
                raise APIError(
                    400,
                    f"'{name}' is {value}; this server allows at most {limits.max_tokens}.",
                    param=name,
                )
    prompt = getattr(request, "prompt", None)
    if (
        isinstance(prompt, list)
        and prompt
        and not isinstance(prompt[0], int)
        and len(prompt) > limits.max_prompts
    ):
        raise APIError(
            400,
            f"'prompt' holds {len(prompt)} prompts; this server allows at most "
            f"{limits.max_prompts}.",
            param="prompt",
        )


def _sse_json(chunk: str) -> dict[str, Any] | None:
    if not chunk.startswith("data: "):
        return None
    try:
        return json.loads(chunk[6:])
    except json.JSONDecodeError:
        return None


class _SlotStreamingResponse(StreamingResponse):
    """A stream that gives its admission slot back however it ends: finished, cut short by
    the client, or cancelled at shutdown (even before its first chunk)."""

    def __init__(self, content, *, slot: Slot, media_type: str) -> None:
        super().__init__(content, media_type=media_type)
        self.slot = slot

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.slot.release()


def _check_input_size(body: dict[str, Any], limits: LimitsConfig) -> None:
    for name in ("messages", "input"):  # chat messages; a Responses request's input items
        items = body.get(name)
        if isinstance(items, list) and len(items) > limits.max_messages:
            raise APIError(
                400,
                f"'{name}' has {len(items)} entries; this server allows at most "
                f"{limits.max_messages}.",
                param=name,
            )
    correction = body.get("correction")
    if correction is not None:
        size = len(json.dumps(correction, separators=(",", ":")).encode())
        if size > limits.max_correction_bytes:
            raise APIError(
                400,
                f"'correction' is {size} bytes as JSON; this server allows at most "
                f"{limits.max_correction_bytes}.",
                param="correction",
                code="correction_too_large",
            )
