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

A tree is capped (:class:`TreeLimits`, from the server's ``[refinement]`` config): its nodes,
its depth, and its costly parts (every type registered with a :class:`Cost` other than
``CHEAP``: model calls, outbound requests, the sandbox). Sandboxed parts draw on the request's
sandbox seconds (:class:`decoding.refinement.budget.Budget`).
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from pydantic import ValidationError

from ..params import CorrectionParams, NestedFieldError
from .budget import SANDBOX_SECONDS, Budget
from .generation import GenerateFn, Message, NextTokenFn
from .verdict import Verdict, failed

COMBINATORS = ("all", "any")

#: Validation context key: the server's :class:`TreeLimits`.
TREE_LIMITS_CONTEXT = "verifier_tree_limits"


class Cost(enum.Enum):
    """What one verification of a type may spend, for the request's caps."""

    #: Bounded work on the text, in process (regex, json_schema, answer).
    CHEAP = "cheap"
    #: A model call or an outbound request (p_true, judge, webhook, custom types).
    COSTLY = "costly"
    #: Runs code in the sandbox (python_tests): costly, and metered in sandbox seconds.
    SANDBOX = "sandbox"


@dataclass(frozen=True)
class TreeLimits:
    """Caps on one verifier tree (``verifier`` and ``truth`` are capped separately)."""

    #: Verifiers and combinations in the tree.
    nodes: int = 32
    #: Levels: a lone verifier is 1, ``{"all": [verifier]}`` is 2.
    depth: int = 4
    #: Parts whose type is not ``Cost.CHEAP``.
    costly: int = 8


class VerifierParams(CorrectionParams):
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
    """The request a candidate answers, the services verifiers may use, and the request's
    budget (which the loop also draws on)."""

    messages: Sequence[Message]
    services: Services = Services()
    #: The server's id of the request (its ``X-Request-Id``), for log lines and for errors
    #: that point to them.
    request_id: str | None = None
    budget: Budget = field(default_factory=Budget)


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
    cost: Cost


_TYPES: dict[str, VerifierType] = {}


def register_verifier(
    name: str,
    params: type[VerifierParams],
    factory: Callable[[Any], Verifier],
    *,
    cost: Cost = Cost.COSTLY,
) -> None:
    """Make ``{"type": name, ...}`` available; ``factory(validated params)`` builds it.
    ``cost`` defaults to costly: only types known to be cheap say otherwise."""
    if name in COMBINATORS:
        raise ValueError(f"'{name}' is reserved for combinations")
    _TYPES[name] = VerifierType(params, factory, cost)


def verifier_types() -> tuple[str, ...]:
    return tuple(sorted(_TYPES))


def parse_verifier(value: Any, context: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The validated, normalised form of a verifier spec. Raises :class:`NestedFieldError`
    whose ``path`` names the offending key below the spec."""
    context = dict(context or {})
    tally = _Tally(context.get(TREE_LIMITS_CONTEXT) or TreeLimits())
    return _parse(value, (), context, tally)


@dataclass
class _Tally:
    """What a tree has used of its :class:`TreeLimits` so far (counted while parsing, so an
    oversized tree is refused before it is walked further)."""

    limits: TreeLimits
    nodes: int = 0
    costly: int = 0

    def node(self, path: tuple[str | int, ...]) -> None:
        self.nodes += 1
        if self.nodes > self.limits.nodes:
            raise NestedFieldError(
                f"the verifier tree has more than {self.limits.nodes} parts; this server "
                f"allows at most {self.limits.nodes} ([refinement] max_verifier_nodes)",
                path,
            )
        if len([p for p in path if p in COMBINATORS]) + 1 > self.limits.depth:
            raise NestedFieldError(
                f"the verifier tree nests deeper than {self.limits.depth} levels "
                "([refinement] max_verifier_depth)",
                path,
            )

    def cost(self, cost: Cost, path: tuple[str | int, ...]) -> None:
        if cost is Cost.CHEAP:
            return
        self.costly += 1
        if self.costly > self.limits.costly:
            raise NestedFieldError(
                f"the verifier tree has more than {self.limits.costly} costly parts (model "
                "calls, outbound requests, sandboxed tests); this server allows at most "
                f"{self.limits.costly} ([refinement] max_costly_verifiers)",
                path,
            )


def _parse(
    value: Any, path: tuple[str | int, ...], context: dict[str, Any], tally: _Tally
) -> dict[str, Any]:
    tally.node(path)
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
        return {
            key: [_parse(part, (*path, key, i), context, tally) for i, part in enumerate(parts)]
        }
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
    tally.cost(entry.cost, path)
    try:
        params = entry.params.model_validate(value, context=context)
    except ValidationError as exc:
        err = exc.errors()[0]
        nested = getattr((err.get("ctx") or {}).get("error"), "path", ())
        message = err["msg"].removeprefix("Value error, ")
        raise NestedFieldError(message, (*path, *err["loc"], *nested)) from None
    except (RecursionError, MemoryError):
        # A validator choked on the size or nesting of a value (e.g. compiling huge code).
        raise NestedFieldError("a value here is too large or too deeply nested", path) from None
    return params.model_dump(mode="json", by_alias=True)


def build_verifier(spec: Mapping[str, Any]) -> Verifier:
    """The verifier a validated spec (see :func:`parse_verifier`) describes."""
    from .combinators import AllOf, AnyOf

    if "all" in spec:
        return AllOf([build_verifier(part) for part in spec["all"]])
    if "any" in spec:
        return AnyOf([build_verifier(part) for part in spec["any"]])
    entry = _TYPES[spec["type"]]
    verifier = entry.factory(entry.params.model_validate(spec))
    return SandboxMetered(verifier) if entry.cost is Cost.SANDBOX else verifier


class SandboxMetered:
    """A sandboxed verifier drawing on the request's sandbox seconds: it runs only while some
    are left, is cut off when they (or the wall time) run out, and is charged its wall time."""

    def __init__(self, inner: Verifier) -> None:
        self.inner = inner
        self.name = inner.name
        self.exact = inner.exact

    async def verify(self, candidate: str, ctx: VerifyContext) -> Verdict:
        budget = ctx.budget
        left = budget.sandbox_left()
        if left is not None and left <= 0:
            return self._spent(budget)
        started = time.monotonic()
        try:
            return await asyncio.wait_for(self.inner.verify(candidate, ctx), left)
        except TimeoutError:
            return self._spent(budget)
        finally:
            budget.charge_sandbox(time.monotonic() - started)

    def _spent(self, budget: Budget) -> Verdict:
        budget.time_left()  # names the wall time when that is what ran out
        budget.exhaust(SANDBOX_SECONDS)
        return failed(
            self.name,
            "The tests could not run: the request's sandbox time is spent.",
            error="sandbox budget spent",
        )
