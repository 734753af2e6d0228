"""The ``unlearning`` correction's parameters, as a request sends them and as the gate fills them.

A client sends ``{"forget_set": NAME, "threshold": ..., "delta": ..., "penalty": ...}``. The
server's gate then fills ``targets`` (the retrieved entries, by index; empty when the gate stays
closed) before the spec goes to the engine, so the engine never receives forget-set text from
the request path. Clients may not set ``targets``.
"""

from __future__ import annotations

from pydantic import Field, FiniteFloat, ValidationInfo, field_validator

from ..correction import PluginParams
from .gate import DEFAULT_THRESHOLD
from .semantic import DEFAULT_DELTA, DEFAULT_LAMBDA

#: Validation context key: ``{forget set name: number of entries}`` the deployment declares.
FORGET_SETS_CONTEXT = "forget_sets"
#: Validation context key, true only where the gate's fields may be set (the engine process).
GATED_CONTEXT = "unlearning_gated"


class UnlearningParams(PluginParams):
    #: Name of a configured forget set.
    forget_set: str
    #: Gate threshold on MiniLM cosine similarity between the request and the set's entries.
    threshold: float = Field(DEFAULT_THRESHOLD, ge=0, le=1)
    #: Soft filter: candidates at least this similar to a forbidden word are banned.
    delta: float = Field(DEFAULT_DELTA, ge=0, le=1)
    #: Soft filter: lambda, the logit penalty per unit of similarity below ``delta``.
    penalty: FiniteFloat = Field(DEFAULT_LAMBDA, ge=0)
    #: Soft filter on or off (the hard trie filter always runs).
    soft: bool = True
    #: Set by the gate: indices of the retrieved entries (empty: decode unchanged).
    targets: tuple[int, ...] | None = None

    @field_validator("forget_set")
    @classmethod
    def _known_set(cls, name: str, info: ValidationInfo) -> str:
        known = (info.context or {}).get(FORGET_SETS_CONTEXT)
        if known is not None and name not in known:
            listed = ", ".join(sorted(known)) or "none"
            raise ValueError(f"unknown forget set '{name}' (configured: {listed})")
        return name

    @field_validator("targets")
    @classmethod
    def _gated_only(cls, value, info: ValidationInfo):
        if value is not None and not (info.context or {}).get(GATED_CONTEXT):
            raise ValueError("is set by the server's gate, not by clients")
        return value

    @field_validator("targets")
    @classmethod
    def _in_range(cls, targets: tuple[int, ...] | None, info: ValidationInfo):
        size = ((info.context or {}).get(FORGET_SETS_CONTEXT) or {}).get(
            info.data.get("forget_set")
        )
        if targets and size is not None and not all(0 <= t < size for t in targets):
            raise ValueError(f"entry index out of range (the set has {size} entries)")
        return targets
