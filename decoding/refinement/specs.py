"""Verifier specs: validated against a registry of types, then built into verifiers.

:func:`parse_verifier` validates a request's spec (a type's parameters, or ``all``/``any``
combinations of specs) against the :class:`~decoding.refinement.verifier.VerifierTypes` its
validation context declares, counting the tree against its :class:`TreeLimits`; errors name
the key. :func:`build_verifier` turns a validated spec into a :class:`Verifier`, from the same
registry.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from ..params import NestedFieldError
from .combinators import AllOf, AnyOf
from .verifier import (
    COMBINATORS,
    TREE_LIMITS_CONTEXT,
    Cost,
    SandboxMetered,
    TreeLimits,
    Verifier,
    VerifierTypes,
)
from .verifier_types import BUILTIN_VERIFIER_TYPES, verifier_types_in


def parse_verifier(value: Any, context: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The validated, normalised form of a verifier spec. Raises :class:`NestedFieldError`
    whose ``path`` names the offending key below the spec."""
    context = dict(context or {})
    tally = _Tally(context.get(TREE_LIMITS_CONTEXT) or TreeLimits())
    return _parse(value, (), context, verifier_types_in(context), tally)


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
    value: Any,
    path: tuple[str | int, ...],
    context: dict[str, Any],
    types: VerifierTypes,
    tally: _Tally,
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
            key: [
                _parse(part, (*path, key, i), context, types, tally) for i, part in enumerate(parts)
            ]
        }
    kind = value.get("type")
    known = ", ".join(types.names())
    if kind is None:
        raise NestedFieldError(
            f"a verifier needs a 'type' (one of: {known}) or 'all'/'any'", (*path, "type")
        )
    entry = types.get(kind) if isinstance(kind, str) else None
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


def build_verifier(
    spec: Mapping[str, Any], types: VerifierTypes = BUILTIN_VERIFIER_TYPES
) -> Verifier:
    """The verifier a validated spec (see :func:`parse_verifier`) describes, built from the
    ``types`` it was validated against."""
    if "all" in spec:
        return AllOf([build_verifier(part, types) for part in spec["all"]])
    if "any" in spec:
        return AnyOf([build_verifier(part, types) for part in spec["any"]])
    entry = types[spec["type"]]
    verifier = entry.factory(entry.params.model_validate(spec))
    return SandboxMetered(verifier) if entry.cost is Cost.SANDBOX else verifier
