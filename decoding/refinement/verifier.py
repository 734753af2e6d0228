"""The verifier protocol, verifier types, and the registry of the types a server has.

A request names its verifier as an object with a ``type`` and that type's parameters, or as a
combination ``{"all": [...]}`` / ``{"any": [...]}`` of such objects::

    {"type": "json_schema", "schema": {...}}
    {"all": [{"type": "regex", "pattern": "^\\\\d+$"}, {"type": "p_true", "threshold": 0.6}]}

A :class:`VerifierType` declares a type: the pydantic model of its parameters (whose ``type``
literal names it), a factory, and what one verification may cost. A :class:`VerifierTypes`
registry is built once from explicit lists (no import registers anything): the pure types in
decoding/refinement/verifier_types.py, the ones that reach the outside world (sandboxed tests,
webhooks) and the operator's plugins in server/refinement/verifiers.py. Specs are read and
built against a registry in decoding/refinement/specs.py.

A tree is capped (:class:`TreeLimits`, from the server's ``[refinement]`` config): its nodes,
its depth, and its costly parts (every type with a :class:`Cost` other than ``CHEAP``: model
calls, outbound requests, the sandbox). Sandboxed parts draw on the request's sandbox seconds
(:class:`decoding.refinement.budget.Budget`).
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, get_args

from ..params import CorrectionParams
from .budget import SANDBOX_SECONDS, Budget
from .generation import GenerateFn, Message, NextTokenFn
from .verdict import Verdict, failed

#: The keys that combine verifiers instead of naming a type.
Combinator = Literal["all", "any"]
COMBINATORS: tuple[str, ...] = get_args(Combinator)

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
    """One verifier type: ``{"type": name, ...}`` is validated by ``params`` and built by
    ``factory(validated params)``. ``cost`` defaults to costly: only types known to be cheap
    say otherwise."""

    params: type[VerifierParams]
    factory: Callable[[Any], Verifier]
    cost: Cost = Cost.COSTLY

    @property
    def name(self) -> str:
        """The type's name: the one value its parameters' ``type`` field admits."""
        names = get_args(self.params.model_fields["type"].annotation)
        if len(names) != 1 or not isinstance(names[0], str):
            raise ValueError(f"{self.params.__name__}.type must be a Literal of one name")
        return names[0]


class VerifierTypes(Mapping[str, VerifierType]):
    """The verifier types a server has, by name (immutable; built from explicit lists)."""

    def __init__(self, types: Iterable[VerifierType]) -> None:
        by_name: dict[str, VerifierType] = {}
        for entry in types:
            name = entry.name
            if name in COMBINATORS:
                raise ValueError(f"'{name}' is reserved for combinations")
            if name in by_name:
                raise ValueError(f"two verifier types are named '{name}'")
            by_name[name] = entry
        self._by_name = by_name

    def __getitem__(self, name: str) -> VerifierType:
        return self._by_name[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._by_name)

    def __len__(self) -> int:
        return len(self._by_name)

    def __add__(self, more: Iterable[VerifierType]) -> VerifierTypes:
        """These types and ``more`` (a name given twice is an error)."""
        return VerifierTypes([*self._by_name.values(), *more])

    def names(self) -> tuple[str, ...]:
        return tuple(sorted(self._by_name))


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
