"""Verifiers that only read the candidate's text: ``regex``, ``json_schema``, ``answer``.

They are deterministic, so their verdicts count as ground truth (``exact``) for flips. Client
patterns run with RE2 and every check runs off the event loop under a deadline
(decoding/refinement/patterns.py); schemas are checked and validated by
decoding/refinement/json_schemas.py.
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from typing import Any, Literal, get_args

from pydantic import Field, FiniteFloat, field_validator, model_validator

from ..params import NestedFieldError
from .answers import tool_calls_of
from .json_schemas import build_validator, check_schema, validation_errors
from .patterns import PatternTimeout, check_deadline, compile_pattern, run_bounded
from .verdict import Verdict, failed, passed
from .verifier import Cost, VerifierParams, VerifierType, VerifyContext


def _timed_out(name: str) -> Verdict:
    return failed(name, "The answer took too long to check.", error="check_timeout")


class RegexParams(VerifierParams):
    """Accept when ``pattern`` matches the candidate (``search``, or the whole text with
    ``full_match``)."""

    type: Literal["regex"] = "regex"
    pattern: str
    full_match: bool = False

    @field_validator("pattern")
    @classmethod
    def _valid(cls, pattern: str) -> str:
        compile_pattern(pattern)
        return pattern


class RegexVerifier:
    name = "regex"
    exact = True

    def __init__(self, params: RegexParams) -> None:
        self.pattern = compile_pattern(params.pattern)
        self.full_match = params.full_match

    def _matches(self, candidate: str) -> bool:
        if self.full_match:
            return self.pattern.fullmatch(candidate.strip())
        return self.pattern.search(candidate)

    async def verify(self, candidate: str, ctx: VerifyContext) -> Verdict:
        try:
            match = await run_bounded(self._matches, candidate)
        except PatternTimeout:
            return _timed_out(self.name)
        if match:
            return passed(self.name)
        how = "match" if self.full_match else "contain a match for"
        return failed(self.name, f"The answer must {how} the pattern {self.pattern.pattern!r}.")


_FENCE = re.compile(r"```(?:[A-Za-z0-9_+-]*)\n(.*?)```", re.S)


def extract_json(text: str) -> Any:
    """The JSON value in ``text``: the whole text, else a fenced block, else the first
    ``{...}``/``[...]`` span that parses. Raises ValueError when there is none."""
    candidates = [text.strip(), *(m.group(1).strip() for m in _FENCE.finditer(text))]
    decoder = json.JSONDecoder()
    for chunk in candidates:
        try:
            return json.loads(chunk)
        except json.JSONDecodeError:
            pass
    for i, ch in enumerate(text):
        if ch in "{[":
            check_deadline()  # each attempt is linear; many attempts are not
            try:
                return decoder.raw_decode(text, i)[0]
            except json.JSONDecodeError:
                continue
    raise ValueError("no JSON value found")


#: What a ``json_schema`` verifier checks: the message's text, or its tool calls' arguments.
SchemaTarget = Literal["content", "tool_calls"]
SCHEMA_TARGETS: tuple[str, ...] = get_args(SchemaTarget)


class JsonSchemaParams(VerifierParams):
    """Accept when the candidate holds JSON valid against ``schema`` (any draft
    ``jsonschema`` knows; ``$schema`` picks it, else the latest). References resolve within
    the schema only; see decoding/refinement/json_schemas.py for the other limits.

    ``target``: ``"content"`` reads the JSON in the message's text; ``"tool_calls"`` checks the
    arguments of every tool call the message made (each must parse as JSON and be valid), and
    rejects a message that made none."""

    type: Literal["json_schema"] = "json_schema"
    json_schema: dict[str, Any] = Field(alias="schema")
    target: SchemaTarget = "content"

    @field_validator("json_schema")
    @classmethod
    def _valid(cls, schema: dict[str, Any]) -> dict[str, Any]:
        check_schema(schema)
        return schema


class JsonSchemaVerifier:
    """Score 1 when valid, 0.5 when JSON but invalid (it is closer), 0 when no JSON."""

    name = "json_schema"
    exact = True

    def __init__(self, params: JsonSchemaParams) -> None:
        self.validator = build_validator(params.json_schema)
        self.target = params.target

    def _check(self, candidate: str) -> Verdict:
        try:
            value = extract_json(candidate)
        except RecursionError:
            return failed(self.name, "The answer's JSON is nested too deeply to check.")
        except ValueError:
            return failed(self.name, "The answer must be a JSON value; none was found.")
        return self._validate(value, "The answer's JSON is", "The JSON does")

    def _check_tool_calls(self, candidate: str) -> Verdict:
        """Every call's arguments valid; the first failing call decides the verdict."""
        calls = tool_calls_of(candidate)
        if not calls:
            return failed(self.name, "The answer must call a tool; it made no tool call.")
        for i, call in enumerate(calls):
            what = f"The arguments of tool call {i} ({call.name})"
            try:
                value = json.loads(call.arguments)
            except RecursionError:
                return failed(self.name, f"{what} are nested too deeply to check.", call=i)
            except ValueError:
                return failed(self.name, f"{what} must be JSON; they are not.", call=i)
            verdict = self._validate(value, f"{what} are", f"{what} do", call=i)
            if not verdict.accepted:
                return verdict
        return passed(self.name, calls=len(calls))

    def _validate(self, value: Any, it_is: str, it_does: str, **details: Any) -> Verdict:
        """``value`` against the schema; the feedback names it ``it_is`` / ``it_does``."""
        try:
            errors, count = validation_errors(self.validator, value)
        except RecursionError:
            return failed(self.name, f"{it_is} nested too deeply to check.", **details)
        if not errors:
            return passed(self.name, **details)
        lines = [
            f"- at {'/'.join(str(p) for p in e.absolute_path) or '(root)'}: {e.message}"
            for e in errors
        ]
        return failed(
            self.name,
            f"{it_does} not match the required schema:\n" + "\n".join(lines),
            score=0.5,
            errors=count,
            **details,
        )

    async def verify(self, candidate: str, ctx: VerifyContext) -> Verdict:
        check = self._check_tool_calls if self.target == "tool_calls" else self._check
        try:
            return await run_bounded(check, candidate)
        except PatternTimeout:
            return _timed_out(self.name)


_NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?")


def normalise(text: str) -> str:
    """Case-folded, NFKC, whitespace collapsed, surrounding punctuation and quotes dropped."""
    text = unicodedata.normalize("NFKC", text).casefold()
    text = " ".join(text.split())
    return text.strip(" \t\n.,;:!?\"'`*()[]")


class AnswerParams(VerifierParams):
    """Compare the candidate's answer with ``reference``.

    ``mode="exact"``: normalised text equality (see :func:`normalise`). ``mode="numeric"``:
    ``|x - ref| <= abs_tol + rel_tol * |ref|``. The answer is ``extract``'s first group (or
    whole match) when given; else the whole text (exact) or the last number in it (numeric).
    """

    type: Literal["answer"] = "answer"
    reference: str | FiniteFloat
    mode: Literal["exact", "numeric"] = "exact"
    abs_tol: FiniteFloat = Field(1e-6, ge=0)
    rel_tol: FiniteFloat = Field(0.0, ge=0)
    extract: str | None = None

    @field_validator("extract")
    @classmethod
    def _valid(cls, pattern: str | None) -> str | None:
        if pattern is not None:
            compile_pattern(pattern)
        return pattern

    @model_validator(mode="after")
    def _numeric_reference(self) -> AnswerParams:
        if self.mode == "numeric" and _to_number(str(self.reference).strip()) is None:
            raise NestedFieldError(
                f"mode 'numeric' needs a number, got {self.reference!r}", ("reference",)
            )
        return self


def _to_number(text: str) -> float | None:
    try:
        return float(text.replace(",", ""))
    except ValueError:
        return None


class AnswerVerifier:
    name = "answer"
    exact = True

    def __init__(self, params: AnswerParams) -> None:
        self.params = params
        self.extract = compile_pattern(params.extract) if params.extract else None
        if params.mode == "numeric":
            self.number = _to_number(str(params.reference).strip())
        self.text = normalise(str(params.reference))

    def answer_of(self, candidate: str) -> str | None:
        if self.extract is not None:
            return self.extract.last(candidate)
        if self.params.mode == "numeric":
            numbers = _NUMBER.findall(candidate)
            return numbers[-1] if numbers else None
        return candidate

    async def verify(self, candidate: str, ctx: VerifyContext) -> Verdict:
        try:
            answer = await run_bounded(self.answer_of, candidate)
        except PatternTimeout:
            return _timed_out(self.name)
        if answer is None:
            return failed(self.name, "No answer was found in the response.")
        if self.params.mode == "numeric":
            value = _to_number(answer)
            if value is not None and math.isclose(
                value, self.number, rel_tol=self.params.rel_tol, abs_tol=self.params.abs_tol
            ):
                return passed(self.name, answer=answer)
        elif normalise(answer) == self.text:
            return passed(self.name, answer=answer)
        return failed(self.name, "The answer is incorrect.", answer=answer)


REGEX = VerifierType(RegexParams, RegexVerifier, Cost.CHEAP)
JSON_SCHEMA = VerifierType(JsonSchemaParams, JsonSchemaVerifier, Cost.CHEAP)
ANSWER = VerifierType(AnswerParams, AnswerVerifier, Cost.CHEAP)
