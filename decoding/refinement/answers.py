"""What a verifier reads of a candidate: its text, and the tool calls its message made.

A round's message is ``content`` plus, when the request has ``tools``, ``tool_calls`` (each a
function name and its arguments as the JSON text the model wrote). Verifiers receive an
:class:`Answer`: the text itself (a ``str``, so every verifier that reads text is unchanged)
carrying the message's :class:`ToolCall` s, which verifiers that check tool calls read
(decoding/refinement/text_verifiers.py, ``json_schema`` with ``target: "tool_calls"``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class ToolCall:
    """One function call of a message: ``name`` and ``arguments``, the model's JSON text
    (unparsed: a model may write arguments that are not JSON)."""

    name: str
    arguments: str

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "arguments": self.arguments}


class Answer(str):
    """A candidate's text (the ``str`` itself) and its message's ``tool_calls``."""

    tool_calls: tuple[ToolCall, ...]

    def __new__(cls, text: str, tool_calls: Iterable[ToolCall] = ()) -> Answer:
        answer = super().__new__(cls, text)
        answer.tool_calls = tuple(tool_calls)
        return answer


def tool_calls_of(candidate: str) -> tuple[ToolCall, ...]:
    """The tool calls a candidate carries (none for plain text)."""
    return candidate.tool_calls if isinstance(candidate, Answer) else ()
