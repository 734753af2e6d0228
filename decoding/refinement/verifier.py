"""The verifier protocol, the registry of verifier types, and verifier specs.

A request names its verifier as an object with a ``type`` and that type's parameters, or as a
combination ``{"all": [...]}`` / ``{"any": [...]}`` of such objects::

    {"type": "json_schema", "schema": {...}}
    {"all": [{"type": "regex", "pattern": "^\\\\d+$"}, {"type": "p_true", "threshold": 0.6}]}

Each type registers the pydantic model of its parameters and a factory with
:func:`register_verifier`: the pure ones here in decoding/, the ones that reach the outside
world (sandboxed tests, webhooks) in adapters/, custom ones from entry points the server's
config names. :func:`parse_verifier` validates a spec against the registry (errors name the
key), :func:`build_verifier` turns a validated spec into a :class:`Verifier`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from pydantic import ValidationError

from ..correction import NestedFieldError, PluginParams
from .generation import GenerateFn, Message, NextTokenFn
from .verdict import Verdict

COMBINATORS = ("all", "any")


class VerifierParams(PluginParams):
    """Base of every verifier type's parameters: ``type`` plus the type's own keys."""

    type: str


@dataclass(frozen=True)
class Services:
    """What verifiers may ask of the server: its engine and outbound model clients."""

    #: Chat generations on this server's engine.
    generate: GenerateFn | None = None
    #: Next-token log-probabilities on this server's engine.
    next_token: NextTokenFn | None = None
    #: ``remote(url, model)``: chat generations on an OpenAI-compatible server, without
    #: credentials (the url has passed the allow-list).
    remote: Callable[[str, str | None], GenerateFn] | None = None
    #: The judges the server's config declares, by name: chat generations on their server,
    #: with the key the server holds for them.
    judges: Mapping[str, GenerateFn] = field(default_factory=dict)


@dataclass(frozen=True)
class VerifyContext:
    """The request a candidate answers, and the services verifiers may use."""

    messages: Sequence[Message]
    services: Services = Services()
    #: The server's id of the request (its ``X-Request-Id``), for log lines and for errors
    #: that point to them.
    request_id: str | None = None


class Verifier(Protocol):
    #: Label in reports and in ``corrigo_verifier_verdicts_total{verifier}``.
    name: str
    #: True when the verdict is ground truth (deterministic, against a known reference): the
    #: loop then counts flips between the draft and the chosen answer.
    exact: bool

    async def verify(self, candidate: str, ctx: VerifyContext) -> Verdict: ...


@dataclass(frozen=True)
class VerifierType:
    params: type[VerifierParams]
    factory: Callable[[Any], Verifier]


_TYPES: dict[str, VerifierType] = {}


def register_verifier(
    name: str, params: type[VerifierParams], factory: Callable[[Any], Verifier]
) -> None:
    """Make ``{"type": name, ...}`` available; ``factory(validated params)`` builds it."""
    if name in COMBINATORS:
        raise ValueError(f"'{name}' is reserved for combinations")
    _TYPES[name] = VerifierType(params, factory)


def verifier_types() -> tuple[str, ...]:
    return tuple(sorted(_TYPES))


def parse_verifier(value: Any, context: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The validated, normalised form of a verifier spec. Raises :class:`NestedFieldError`
    whose ``path`` names the offending key below the spec."""
    return _parse(value, (), dict(context or {}))


def _parse(value: Any, path: tuple[str | int, ...], context: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise NestedFieldError(
            f"a verifier is an object with a 'type', or {{'all': [...]}} / {{'any': [...]}}; "
            f"got {type(value).__name__}",
            path,
        )
    combinator = [key for key in COMBINATORS if key in value]
    if combinator:
        key = combinator[0]
        if len(value) != 1:
            raise NestedFieldError(f"'{key}' takes no sibling keys", path)
        parts = value[key]
        if not isinstance(parts, list) or not parts:
            raise NestedFieldError(f"'{key}' needs a non-empty list of verifiers", (*path, key))
        return {key: [_parse(part, (*path, key, i), context) for i, part in enumerate(parts)]}
    kind = value.get("type")
    known = ", ".join(verifier_types())
    if kind is None:
        raise NestedFieldError(
            f"a verifier needs a 'type' (one of: {known}) or 'all'/'any'", (*path, "type")
        )
    entry = _TYPES.get(kind) if isinstance(kind, str) else None
    if entry is None:
        raise NestedFieldError(
            f"unknown verifier type {kind!r}; this server has: {known}", (*path, "type")
        )
    try:
        params = entry.params.model_validate(value, context=context)
    except ValidationError as exc:
        err = exc.errors()[0]
        nested = getattr((err.get("ctx") or {}).get("error"), "path", ())
        message = err["msg"].removeprefix("Value error, ")
        raise NestedFieldError(message, (*path, *err["loc"], *nested)) from None
    return params.model_dump(mode="json", by_alias=True)


def build_verifier(spec: Mapping[str, Any]) -> Verifier:
    """The verifier a validated spec (see :func:`parse_verifier`) describes."""
    from .combinators import AllOf, AnyOf

    if "all" in spec:
        return AllOf([build_verifier(part) for part in spec["all"]])
    if "any" in spec:
        return AnyOf([build_verifier(part) for part in spec["any"]])
    entry = _TYPES[spec["type"]]
    return entry.factory(entry.params.model_validate(spec))
