"""vLLM's error responses in corrigo's OpenAI error shape (server/errors.py)."""

from __future__ import annotations

from adapters.vllm_compat import ErrorResponse

from .errors import APIError
from .exchange import Endpoint


def from_vllm_error(result: ErrorResponse, endpoint: Endpoint) -> APIError:
    """vLLM's error object, in corrigo's OpenAI shape; context overflows get OpenAI's code."""
    err = result.error
    param, code = err.param, None
    if "maximum context length" in err.message:
        param, code = endpoint.prompt_param, "context_length_exceeded"
    elif param is None:
        # Some of vLLM's checks raise a bare ValueError ("n must be at least 1, got 0."): its
        # message opens with the field's name, which is enough to name the parameter.
        first_word = err.message.split(" ", 1)[0].strip("'`\"")
        if first_word in endpoint.request_model.model_fields:
            param = first_word
    return APIError(int(err.code), err.message, param=param, code=code)
