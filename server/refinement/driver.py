"""Drives ``correction.refinement`` on the engine: the server side of decoding/refinement.

A request-level wrapper, not a per-step correction: the route (server/openai_api.py) hands a
request whose correction asks for refinement (``CorrectionSpec.refinement``)
to :class:`RefinementDriver` instead of calling vLLM once.

Each round is an ordinary chat completion on this server's engine through vLLM's serving
layer, carrying the request's sampling settings and its other (per-step) corrections; the loop
itself (decoding/refinement/loop.py) decides what to generate and which answer wins.

Responses. Non-streaming: the chosen answer as one choice, ``usage`` summing every round (and
critique or check) the loop ran, and ``correction.refinement`` reporting the rounds. Streaming
(policy): the answer is only known once selected, so by default the stream sends SSE comments
(``: keep-alive``) every ``[refinement] keepalive_seconds`` while the rounds run, then the
chosen answer as ordinary chunks, then the report chunk and ``[DONE]``. With
``stream_rounds: true`` each round's candidate and verdict is also sent as it is verified, as a
chunk with no choices and a ``refinement_round`` object. A client that disconnects aborts the
rounds (and their engine requests).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any

from fastapi.responses import JSONResponse, Response

from adapters.vllm_compat import CompletionRequest, ErrorResponse
from decoding.params import RequestRefused
from decoding.proxy_tuning.plugin import ProxyTuning
from decoding.proxy_tuning.prompts import ProxyPrompts
from decoding.refinement import (
    Candidate,
    Generation,
    GenerationRefused,
    Message,
    NoCandidate,
    Outcome,
    RefinementParams,
    Services,
    VerifyContext,
    refine,
)
from decoding.refinement.answers import ToolCall
from decoding.refinement.generation import GenerateFn
from decoding.refinement.verifier_types import verifier_types_in
from decoding.spec import WIRE_KEY, CorrectionSpec
from decoding.unlearning.admission import NAME as UNLEARNING
from decoding.unlearning.admission import UnlearningGate, request_texts

from ..cancellation import CancelScope
from ..corrections import correction_report, wire_xargs
from ..errors import APIError, error_body
from ..exchange import CLIENT_CLOSED, Endpoint, Exchange
from ..metrics import ServerMetrics
from ..runtime import EngineRuntime
from ..vllm_errors import from_vllm_error
from .remote_model import remote_generate

PROXY_TUNING = ProxyTuning.name


class _Usage:
    def __init__(self) -> None:
        self.prompt_tokens = 0
        self.completion_tokens = 0

    def add(self, usage: Any) -> None:
        if usage is not None:
            self.prompt_tokens += usage.prompt_tokens or 0
            self.completion_tokens += usage.completion_tokens or 0

    def to_json(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }


class RefinementDriver:
    """Runs one refinement request per call of :meth:`respond`."""

    def __init__(
        self,
        runtime: EngineRuntime,
        metrics: ServerMetrics,
        keepalive: float,
        judges: Mapping[str, GenerateFn] | None = None,
    ) -> None:
        self.runtime = runtime
        self.metrics = metrics
        self.keepalive = keepalive
        #: The configured judges (``configure_refinement``), by name.
        self.judges = dict(judges or {})

    def check(self, request) -> None:
        """Refuse what refinement cannot serve (before the request takes an admission slot)."""
        if getattr(request, "n", 1) not in (None, 1):
            raise APIError(
                400, "'n' must be 1 with correction.refinement: it returns one answer.", param="n"
            )

    async def complete(
        self, request, ex, scope: CancelScope, record: Callable[[Any], None]
    ) -> Response:
        """The non-streaming response to a chat request carrying ``correction.refinement``
        (``ex`` is the route's bookkeeping; ``record`` records its metrics once it is done).
        Every round runs in ``scope``: a client that leaves cancels the rounds."""
        params = _params(ex)
        usage = _Usage()
        messages = [dict(m) for m in request.messages]
        outcome = await scope.run(self._run(request, ex, params, messages, usage))
        if outcome is None:  # the client went away: the rounds were cancelled
            ex.status = CLIENT_CLOSED
            record(ex)
            return Response(status_code=CLIENT_CLOSED)
        payload = self._response(outcome, usage, ex)
        record(ex)
        return JSONResponse(payload)

    def stream(self, request, ex, record: Callable[[Any], None]) -> AsyncIterator[str]:
        """The SSE events of a streamed refinement (the streaming response runs them and
        cancels them when the client leaves)."""
        params = _params(ex)
        messages = [dict(m) for m in request.messages]
        return self._stream(request, ex, params, messages, _Usage(), record)

    async def _run(
        self,
        request,
        ex,
        params: RefinementParams,
        messages: list[Message],
        usage: _Usage,
        on_candidate=None,
    ) -> Outcome:
        services = Services(
            generate=self._generate(request, ex, usage, per_step=False),
            next_token=self._next_token,
            remote=remote_generate,
            judges=self.judges,
        )
        try:
            outcome = await refine(
                params,
                messages,
                self._generate(request, ex, usage, per_step=True),
                VerifyContext(messages, services, request_id=ex.request_id),
                on_candidate=on_candidate,
                # The registry the request's specs were validated against.
                verifier_types=verifier_types_in(self.runtime.correction_context),
                # The cap _generate puts on every sequence (its reservations stay within it).
                sequence_tokens=request.max_completion_tokens or request.max_tokens,
            )
        except NoCandidate as exc:
            if isinstance(exc.cause, APIError):
                raise exc.cause from None
            raise APIError(
                400, f"correction.refinement: {exc}", param="correction.refinement"
            ) from None
        self._observe(outcome)
        ex.completion_tokens = usage.completion_tokens
        return outcome

    def _generate(self, request, ex, usage: _Usage, *, per_step: bool):
        """Chat completions on the engine, as the request asked (``per_step``: with its other
        corrections; verifiers' own generations run without them, except unlearning, which no
        generation of a request that asked for it may escape)."""
        serving = self.runtime.serving.openai_serving_chat
        plain = _without_corrigo(request.vllm_xargs)
        # The texts the gate read at admission (only a request with unlearning is gated).
        unlearning = ex.correction is not None and UNLEARNING in ex.correction.steps
        admitted = set(request_texts({"messages": request.messages})) if unlearning else set()
        cap = request.max_completion_tokens or request.max_tokens
        base = f"refine-{uuid.uuid4().hex[:16]}"
        counter = itertools.count()
        seeds = _RoundSeeds(request.seed)

        async def generate(
            messages: Sequence[Message],
            *,
            n: int = 1,
            max_tokens: int | None = None,
            temperature: float | None = None,
        ) -> list[Generation]:
            update: dict[str, Any] = {
                "messages": [dict(m) for m in messages],
                "n": n,
                "stream": False,
                "stream_options": None,
                "request_id": f"{base}-{next(counter)}",
                "max_tokens": _smallest(cap, max_tokens),
                "max_completion_tokens": None,
                "vllm_xargs": await self._round_xargs(ex, plain, messages, admitted, per_step),
                "seed": seeds.take(n),
            }
            if temperature is not None:
                update["temperature"] = temperature
            result = await serving.create_chat_completion(request.model_copy(update=update), None)
            if isinstance(result, ErrorResponse):
                err = from_vllm_error(result, Endpoint.CHAT)
                raise GenerationRefused(err.message, err)
            usage.add(result.usage)
            total = result.usage.completion_tokens if result.usage else 0
            shares = [total // len(result.choices)] * len(result.choices)
            shares[-1] += total - sum(shares)
            return [
                Generation(
                    c.message.content or "",
                    share,
                    c.finish_reason,
                    _tool_calls(c.message),
                    payload=(result, c),
                )
                for c, share in zip(result.choices, shares, strict=True)
            ]

        return generate

    async def _round_xargs(
        self,
        ex,
        plain: dict[str, Any] | None,
        messages: Sequence[Message],
        admitted: set[str],
        per_step: bool,
    ) -> dict[str, Any] | None:
        """One generation's ``vllm_xargs``. With unlearning, the text this generation adds to
        what the gate read at admission (feedback, critiques and verifier prompts can quote
        client text: a regex verifier's feedback quotes its pattern) is gated too, and the
        entries it retrieves join the request's targets: a round can only be filtered more.
        With proxy-tuning, auxiliary models with their own chat format get this round's
        conversation in it."""
        spec = ex.correction
        steps = dict(spec.steps) if per_step and spec is not None else {}
        params = spec.steps.get(UNLEARNING) if spec is not None else None
        gate = self.runtime.admissions.get(UNLEARNING)
        if params is not None and isinstance(gate, UnlearningGate):
            added = [t for t in request_texts({"messages": messages}) if t not in admitted]
            try:
                more = await gate.more_targets(params, added)
            except RequestRefused as exc:
                err = APIError.refused(exc)
                raise GenerationRefused(err.message, err) from None
            targets = tuple(sorted({*(params.targets or ()), *more}))
            steps[UNLEARNING] = params.model_copy(update={"targets": targets})
        prompts = self.runtime.admissions.get(PROXY_TUNING)
        if PROXY_TUNING in steps and isinstance(prompts, ProxyPrompts):
            # Auxiliary models with their own chat format see this round's conversation.
            try:
                steps[PROXY_TUNING] = await prompts.for_messages(steps[PROXY_TUNING], messages)
            except RequestRefused as exc:
                err = APIError.refused(exc)
                raise GenerationRefused(err.message, err) from None
        return wire_xargs(CorrectionSpec(steps), plain) if steps else plain

    async def _next_token(self, prompt: str, top: int) -> dict[str, float]:
        """The ``top`` next-token log-probabilities after ``prompt``: one forward (a 1-token
        greedy completion with logprobs) on the engine."""
        request = CompletionRequest.model_validate(
            {
                "model": self.runtime.model.model_id,
                "prompt": prompt,
                "max_tokens": 1,
                "temperature": 0.0,
                "logprobs": top,
            }
        )
        serving = self.runtime.serving.openai_serving_completion
        result = await serving.create_completion(request, None)
        if isinstance(result, ErrorResponse):
            raise RuntimeError(f"p_true forward failed: {result.error.message}")
        logprobs = result.choices[0].logprobs
        return dict(logprobs.top_logprobs[0]) if logprobs and logprobs.top_logprobs else {}

    def _observe(self, outcome: Outcome) -> None:
        self.metrics.refinement_rounds.labels(outcome.strategy).observe(len(outcome.candidates))
        for candidate in outcome.candidates:
            for leaf in candidate.verdict.leaves():
                verdict = (
                    "error"
                    if "error" in leaf.details
                    else ("accepted" if leaf.accepted else "rejected")
                )
                self.metrics.verifier_verdicts.labels(leaf.verifier, verdict).inc()
        if outcome.truth is not None and outcome.truth.flip is not None:
            self.metrics.refinement_flips.labels(outcome.strategy, outcome.truth.flip).inc()

    def _report(self, outcome: Outcome, ex) -> dict[str, Any]:
        return correction_report(ex.correction, self.runtime.registry, refinement=outcome.report())

    def _response(self, outcome: Outcome, usage: _Usage, ex) -> dict[str, Any]:
        result, _ = outcome.chosen.payload
        payload = result.model_dump()
        payload["choices"] = [_answer(outcome)]
        payload["usage"] = usage.to_json()
        if ex.profile is not None:
            payload["model"] = ex.profile.name
        payload["correction"] = self._report(outcome, ex)
        return payload

    async def _stream(
        self,
        request,
        ex,
        params: RefinementParams,
        messages: list[Message],
        usage: _Usage,
        record: Callable[[Any], None],
    ) -> AsyncIterator[str]:
        stream_id = f"chatcmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        model = ex.profile.name if ex.profile is not None else ex.model
        rounds: asyncio.Queue[Candidate] = asyncio.Queue()

        async def on_candidate(candidate: Candidate) -> None:
            await rounds.put(candidate)

        def chunk(choices: list[dict[str, Any]], **extra: Any) -> str:
            body = {
                "id": stream_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": choices,
                **extra,
            }
            return f"data: {json.dumps(body, separators=(',', ':'))}\n\n"

        task = asyncio.ensure_future(
            self._run(
                request,
                ex,
                params,
                messages,
                usage,
                on_candidate if params.stream_rounds else None,
            )
        )
        finished = False
        try:
            while not task.done() or not rounds.empty():
                if rounds.empty():
                    done, _ = await asyncio.wait({task}, timeout=self.keepalive)
                    if not done and rounds.empty():
                        yield ": keep-alive\n\n"
                    continue
                candidate = rounds.get_nowait()
                yield chunk([], refinement_round={"text": candidate.text, **candidate.to_json()})
            try:
                outcome = task.result()
            except APIError as err:
                ex.status = err.status
                yield f"data: {json.dumps({'error': _error_json(err)})}\n\n"
                yield "data: [DONE]\n\n"
                finished = True
                return
            # The answer's first token reaches the client now.
            self.metrics.time_to_first_token.labels(ex.model, ex.endpoint.value).observe(
                time.perf_counter() - ex.started
            )
            for choice in _answer_chunks(_answer(outcome)):
                yield chunk([choice])
            if ex.client_wants_usage:
                yield chunk([], usage=usage.to_json())
            yield chunk([], correction=self._report(outcome, ex))
            yield "data: [DONE]\n\n"
            finished = True
        finally:
            if not task.done():
                task.cancel()  # the client went away: abort the rounds
                with contextlib.suppress(BaseException):
                    await task
            if not finished:
                ex.status = CLIENT_CLOSED
            record(ex)


class _RoundSeeds:
    """Seeds for a seeded request's generations: its k-th sequence is drawn with ``seed + k``.

    vLLM seeds the ``n`` choices of one call ``seed``, ``seed + 1``, ...; each call here starts
    past the sequences already drawn. Reusing the request's seed in every round would replay
    the same random draws, so sampled rounds would repeat each other (and try_again stop on a
    "repeated answer") instead of exploring. Unseeded requests stay unseeded.
    """

    def __init__(self, seed: int | None) -> None:
        self.next = seed

    def take(self, n: int) -> int | None:
        seed = self.next
        if seed is not None:
            self.next = seed + n
        return seed


def _answer(outcome: Outcome) -> dict[str, Any]:
    """The chosen candidate's choice, as its round's response has it (``message`` with
    ``tool_calls``, ``logprobs`` when asked, ``finish_reason``)."""
    _, choice = outcome.chosen.payload
    answer = choice.model_dump()
    if outcome.chosen.text != (answer["message"].get("content") or ""):
        # The candidate holds more than this generation: localize keeps the correct steps
        # before its rewrite (decoding/refinement/localize.py). Its logprobs cover the
        # rewrite only, so none are reported rather than ones that do not add up.
        answer["message"]["content"] = outcome.chosen.text
        answer["logprobs"] = None
    return {**answer, "index": 0}


def _tool_calls(message: Any) -> tuple[ToolCall, ...]:
    """The tool calls of a round's message (vLLM's parsed ``tool_calls``), for verifiers."""
    return tuple(
        ToolCall(call.function.name, call.function.arguments) for call in message.tool_calls or ()
    )


def _answer_chunks(answer: dict[str, Any]) -> list[dict[str, Any]]:
    """The chosen answer (a non-streamed response's choice) as streamed choices, in the
    OpenAI format: the role, the content with its logprobs, one delta per tool call (whole:
    the answer is complete before it is sent), then the finish reason."""
    message = answer["message"]
    base = {"index": 0, "logprobs": None, "finish_reason": None}
    chunks = [{**base, "delta": {"role": "assistant", "content": ""}}]
    content, logprobs = message.get("content"), answer.get("logprobs")
    if content or logprobs:
        chunks.append({**base, "delta": {"content": content or ""}, "logprobs": logprobs})
    for i, call in enumerate(message.get("tool_calls") or ()):
        delta = {"index": i, "id": call["id"], "type": "function", "function": call["function"]}
        chunks.append({**base, "delta": {"tool_calls": [delta]}})
    chunks.append({**base, "delta": {}, "finish_reason": answer.get("finish_reason")})
    return chunks


def _smallest(*limits: int | None) -> int | None:
    """The tightest of the given token limits (None: no limit)."""
    given = [limit for limit in limits if limit is not None]
    return min(given) if given else None


def _params(ex: Exchange) -> RefinementParams:
    """The refinement a request the route handed over asks for."""
    assert ex.correction is not None and ex.correction.refinement is not None, (
        "the route hands over only requests that ask for refinement"
    )
    return ex.correction.refinement


def _without_corrigo(xargs: dict[str, Any] | None) -> dict[str, Any] | None:
    if not xargs or WIRE_KEY not in xargs:
        return xargs
    rest = {k: v for k, v in xargs.items() if k != WIRE_KEY}
    return rest or None


def _error_json(err: APIError) -> dict[str, Any]:
    return error_body(err.status, err.message, param=err.param, code=err.code)["error"]
