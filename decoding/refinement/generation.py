"""What the loop asks of an engine: the ``generate`` callable and what it returns.

The server supplies a ``generate`` that runs the request on its engine (with the request's
other corrections); tests supply a fake. The loop never sees the engine itself.
"""

from __future__ import annotations

from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from .answers import ToolCall

#: A chat message as the OpenAI API carries it: ``{"role": ..., "content": ...}``.
Message = Mapping[str, object]


@dataclass(frozen=True)
class Generation:
    """One completion: its text, how many tokens it took, why it ended, and the tool calls its
    message made."""

    text: str
    tokens: int
    finish_reason: str | None = "stop"
    tool_calls: tuple[ToolCall, ...] = ()
    #: The engine's own record of it (opaque to the loop; the server builds its response from it).
    payload: Any = field(default=None, compare=False, repr=False)


class GenerationRefused(RuntimeError):
    """The engine refused a generation (e.g. the conversation outgrew the context). ``cause``
    is the engine side's own error, re-raised when not even the draft could be generated."""

    def __init__(self, message: str, cause: BaseException | None = None) -> None:
        super().__init__(message)
        self.cause = cause


class GenerateFn(Protocol):
    def __call__(
        self,
        messages: Sequence[Message],
        *,
        n: int = 1,
        max_tokens: int | None = None,
        temperature: float | None = None,
    ) -> Awaitable[list[Generation]]:
        """``n`` completions of the conversation ``messages``. ``max_tokens`` and
        ``temperature`` override the request's own when given (``max_tokens`` never above it)."""


class NextTokenFn(Protocol):
    def __call__(self, prompt: str, top: int) -> Awaitable[dict[str, float]]:
        """Log-probabilities of the ``top`` most likely tokens after the raw text ``prompt``."""


def user_text(messages: Sequence[Message]) -> str:
    """The last user turn: the instruction the candidate answers."""
    for message in reversed(messages):
        if message.get("role") == "user":
            return content_text(message.get("content"))
    return ""


def content_text(content: object) -> str:
    """A message's text, whether its content is a string or a list of typed parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(part.get("text", "")) for part in content if isinstance(part, Mapping))
    return ""
