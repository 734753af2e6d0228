"""The ``refuse`` policy's response: the forget set's message instead of a generation.

A request whose gate opened under ``refuse`` (decoding/unlearning/policy.py) never reaches the
engine. Its response has the shape vLLM gives a finished one, so the routes add the report and
rename the model as for any other: every choice (``n`` per prompt) carries the operator's
message with ``finish_reason = "content_filter"``; a streaming request gets it as one chunk,
then the usage chunk and ``[DONE]``. Usage counts the prompt only: the prompt tokens as vLLM's
own render path (chat template, tools, truncation) makes them, ``completion_tokens = 0``.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from adapters.vllm_compat import (
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatCompletionResponseChoice,
    ChatCompletionResponseStreamChoice,
    ChatCompletionStreamResponse,
    ChatMessage,
    CompletionRequest,
    CompletionResponse,
    CompletionResponseChoice,
    CompletionResponseStreamChoice,
    CompletionStreamResponse,
    DeltaMessage,
    ErrorResponse,
    UsageInfo,
    extract_prompt_len,
)
from decoding.unlearning.policy import CONTENT_FILTER

Refusal = ChatCompletionResponse | CompletionResponse | AsyncIterator[str]


async def prompt_lengths(serving: Any, request: Any) -> list[int] | ErrorResponse:
    """Each rendered prompt's length in tokens (one per prompt of a batched completion), by
    the serving object's own render call (``openai_serving_chat`` or ``_completion``)."""
    if isinstance(request, ChatCompletionRequest):
        rendered = await serving.render_chat_request(request)
        if isinstance(rendered, ErrorResponse):
            return rendered
        inputs = rendered[1]
    else:
        inputs = await serving.render_completion_request(request)
        if isinstance(inputs, ErrorResponse):
            return inputs
    return [extract_prompt_len(serving.model_config, engine_input) for engine_input in inputs]


async def refusal(
    serving: Any, request: ChatCompletionRequest | CompletionRequest, model: str, message: str
) -> Refusal | ErrorResponse:
    """The refused request's response (an SSE chunk iterator when it streams), or vLLM's
    error for a request it would have refused anyway (e.g. a prompt longer than the context)."""
    lengths = await prompt_lengths(serving, request)
    if isinstance(lengths, ErrorResponse):
        return lengths
    n = request.n or 1
    prompt_tokens = sum(lengths)
    usage = UsageInfo(prompt_tokens=prompt_tokens, completion_tokens=0, total_tokens=prompt_tokens)
    indices = range(len(lengths) * n)  # choice i answers prompt i // n
    # Set explicitly: chunks are written with exclude_unset, as vLLM writes its own.
    created = int(time.time())
    if isinstance(request, ChatCompletionRequest):
        ident = f"chatcmpl-{uuid.uuid4().hex}"
        if request.stream:
            head = {"id": ident, "object": "chat.completion.chunk", "created": created}
            chunk = ChatCompletionStreamResponse(
                **head,
                model=model,
                choices=[
                    ChatCompletionResponseStreamChoice(
                        index=i,
                        delta=DeltaMessage(role="assistant", content=message),
                        logprobs=None,
                        finish_reason=CONTENT_FILTER,
                    )
                    for i in indices
                ],
            )
            tail = ChatCompletionStreamResponse(**head, model=model, choices=[], usage=usage)
            return _sse(chunk, tail)
        return ChatCompletionResponse(
            id=ident,
            created=created,
            model=model,
            choices=[
                ChatCompletionResponseChoice(
                    index=i,
                    message=ChatMessage(role="assistant", content=message),
                    finish_reason=CONTENT_FILTER,
                )
                for i in indices
            ],
            usage=usage,
        )
    ident = f"cmpl-{uuid.uuid4().hex}"
    if request.stream:
        head = {"id": ident, "object": "text_completion", "created": created}
        chunk = CompletionStreamResponse(
            **head,
            model=model,
            choices=[
                CompletionResponseStreamChoice(
                    index=i, text=message, logprobs=None, finish_reason=CONTENT_FILTER
                )
                for i in indices
            ],
        )
        tail = CompletionStreamResponse(**head, model=model, choices=[], usage=usage)
        return _sse(chunk, tail)
    return CompletionResponse(
        id=ident,
        created=created,
        model=model,
        choices=[
            CompletionResponseChoice(index=i, text=message, finish_reason=CONTENT_FILTER)
            for i in indices
        ],
        usage=usage,
    )


async def _sse(*chunks: Any) -> AsyncIterator[str]:
    """The chunks as vLLM writes them (``exclude_unset``), then ``[DONE]``."""
    for chunk in chunks:
        yield f"data: {chunk.model_dump_json(exclude_unset=True)}\n\n"
    yield "data: [DONE]\n\n"
