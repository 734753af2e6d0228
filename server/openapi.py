"""What the OpenAPI document (/openapi.json) says about the /v1 generation routes.

The handlers read the raw body themselves (size limit first, then JSON, then vLLM's own request
models), so FastAPI cannot derive their schemas. This module states them: the request fields
corrigo documents (vLLM accepts further sampling fields and passes them on), vLLM's own
response models for 200, the SSE stream, and the OpenAI error object for every error status.
Schemathesis fuzzes the server against this document (tests/integration/test_fuzz.py).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, RootModel

from adapters.vllm_compat import (
    ChatCompletionResponse,
    CompletionResponse,
    DetokenizeResponse,
    ResponsesResponse,
    TokenizeResponse,
)


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorBody(BaseModel):
    """OpenAI's error object."""

    error: ErrorDetail


class _Sampling(BaseModel):
    model: str | None = Field(None, description="A served model id or profile; default: the model.")
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0)
    top_p: float | None = Field(None, gt=0, le=1)
    n: int | None = Field(None, ge=1, description="Capped by limits.max_n.")
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool | None = None
    correction: dict[str, Any] | None = Field(
        None, description="Decoding-time corrections (README: Corrections)."
    )


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str


class ChatCompletionBody(_Sampling):
    """The documented fields of a chat completion request."""

    messages: list[ChatMessage] = Field(
        ..., min_length=1, description="Capped by limits.max_messages."
    )


class CompletionBody(_Sampling):
    """The documented fields of a completion request."""

    prompt: str | list[str]


class ResponsesInputMessage(BaseModel):
    role: Literal["system", "developer", "user", "assistant"]
    content: str


class ResponsesBody(BaseModel):
    """The documented fields of a Responses API request."""

    model: str | None = Field(None, description="A served model id or profile; default: the model.")
    input: str | list[ResponsesInputMessage] = Field(
        ..., description="Input items capped by limits.max_messages."
    )
    instructions: str | None = None
    max_output_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0)
    top_p: float | None = Field(None, gt=0, le=1)
    stream: bool | None = None
    correction: dict[str, Any] | None = Field(
        None, description="Per-step decoding-time corrections (README: Corrections)."
    )


class TokenizePromptBody(BaseModel):
    model: str | None = None
    prompt: str
    add_special_tokens: bool = True


class TokenizeChatBody(BaseModel):
    model: str | None = None
    messages: list[ChatMessage] = Field(..., min_length=1)


class TokenizeBody(RootModel[TokenizePromptBody | TokenizeChatBody]):
    """A prompt, or chat messages rendered by the chat template, to tokenize."""


class DetokenizeBody(BaseModel):
    model: str | None = None
    tokens: list[int] = Field(..., description="Token ids of the served model's vocabulary.")


class LoadLoRAAdapterBody(BaseModel):
    lora_name: str = Field(..., description="The model id requests will name the adapter by.")
    lora_path: str = Field(..., description="A PEFT adapter folder on the server's filesystem.")
    load_inplace: bool = False


class UnloadLoRAAdapterBody(BaseModel):
    lora_name: str


class VersionBody(BaseModel):
    version: str = Field(..., description="vLLM's version.")
    corrigo: str


def request_body(model: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` declaring ``model`` as the JSON request body."""
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": _inline(model.model_json_schema())}},
        }
    }


_ERRORS = {
    400: "Invalid request (fields, limits, correction, context length).",
    401: "Missing or incorrect API key.",
    404: "Unknown model (or LoRA adapter).",
    413: "Request body over limits.max_request_bytes or limits.max_json_values.",
    415: "The body is not sent as application/json.",
    429: "Over the admission or per-key rate limits; see Retry-After.",
    503: "The engine is starting, stopped or dead; see Retry-After.",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {s: {"model": ErrorBody, "description": _ERRORS[s]} for s in statuses}


def generation_responses(response: type[BaseModel]) -> dict[int | str, dict[str, Any]]:
    """200 as JSON (vLLM's response model) or as a server-sent event stream, and the errors."""
    return {
        200: {
            "model": response,
            "description": "The completion; with stream=true, server-sent events.",
            "content": {
                "text/event-stream": {
                    "schema": {
                        "description": "One server-sent event: a JSON chunk, or [DONE].",
                        "type": "object",
                        "properties": {"event": {"type": "string"}, "data": {"type": "string"}},
                        "required": ["data"],
                    }
                }
            },
        },
        **error_responses(400, 401, 404, 413, 415, 429, 503),
    }


CHAT_RESPONSES = generation_responses(ChatCompletionResponse)
COMPLETION_RESPONSES = generation_responses(CompletionResponse)
RESPONSES_RESPONSES = generation_responses(ResponsesResponse)
TOKENIZE_RESPONSES = {
    200: {"model": TokenizeResponse},
    **error_responses(400, 401, 404, 413, 415, 429, 503),
}
DETOKENIZE_RESPONSES = {
    200: {"model": DetokenizeResponse},
    **error_responses(400, 401, 404, 413, 415, 429, 503),
}
#: vLLM answers a LoRA load or unload with a line of text.
LORA_RESPONSES = {
    200: {
        "description": "Done; a line of text says what.",
        "content": {"text/plain": {"schema": {"type": "string"}}},
    },
    **error_responses(400, 401, 404, 413, 415, 429, 503),
}


def _inline(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` with its local ``$defs`` references replaced by their content (OpenAPI
    resolves ``$ref`` against the whole document, where ``#/$defs`` does not exist)."""
    defs = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return resolve(defs[ref.removeprefix("#/$defs/")])
            return {k: resolve(v) for k, v in node.items()}
        if isinstance(node, list):
            return [resolve(v) for v in node]
        return node

    return resolve(schema)
