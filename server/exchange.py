"""One request's exchange as the routes see it: which endpoint, its bookkeeping, and the status
recorded when the client leaves. Shared by the routes (server/openai_api.py) and the refinement
driver (server/refinement/driver.py)."""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from typing import Any

from adapters.vllm_compat import ChatCompletionRequest, CompletionRequest, ResponsesRequest
from decoding.contract import Admitted
from decoding.spec import CorrectionSpec

from .profiles import Profile

#: Status recorded when the client went away before the response was complete (nginx's code).
CLIENT_CLOSED = 499


class Endpoint(enum.Enum):
    CHAT = "chat_completions"
    COMPLETION = "completions"
    RESPONSES = "responses"

    @property
    def request_model(
        self,
    ) -> type[ChatCompletionRequest] | type[CompletionRequest] | type[ResponsesRequest]:
        return _REQUEST_MODELS[self]

    @property
    def prompt_param(self) -> str:
        return _PROMPT_PARAMS[self]

    @property
    def chunk_object(self) -> str:
        return "chat.completion.chunk" if self is Endpoint.CHAT else "text_completion"


_REQUEST_MODELS = {
    Endpoint.CHAT: ChatCompletionRequest,
    Endpoint.COMPLETION: CompletionRequest,
    Endpoint.RESPONSES: ResponsesRequest,
}
_PROMPT_PARAMS = {
    Endpoint.CHAT: "messages",
    Endpoint.COMPLETION: "prompt",
    Endpoint.RESPONSES: "input",
}


@dataclass
class Exchange:
    """One request's bookkeeping for metrics and the correction report."""

    endpoint: Endpoint
    started: float = field(default_factory=time.perf_counter)
    model: str = ""
    status: int = 200
    correction: CorrectionSpec | None = None
    #: The profile the request named as its model, if any.
    profile: Profile | None = None
    completion_tokens: int = 0
    #: What each correction's admission step (decoding/contract.py) prepared before
    #: admission, by correction name, then what it decided once admitted.
    prepared: dict[str, Any] = field(default_factory=dict)
    admitted: dict[str, Admitted] = field(default_factory=dict)
    #: Whether a streaming client asked for the final usage chunk itself.
    client_wants_usage: bool = False
    #: The report ticket the engine's figures for the correction come under (request_reports).
    ticket: list[int] | None = None
    #: The request's ``X-Request-Id`` (server/request_id.py), for log lines.
    request_id: str | None = None

    @property
    def answer(self) -> str | None:
        """The text an admission step answers the request with, without generation."""
        return next((a.answer for a in self.admitted.values() if a.answer is not None), None)
