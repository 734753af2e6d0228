"""The ``unlearning`` correction's parameters, as a request sends them and as the gate fills them.

A client sends ``{"forget_set": NAME, "threshold": ..., "delta": ..., "penalty": ...}``. The
server's gate then fills ``targets`` (the retrieved entries, by index; empty when the gate stays
closed) before the spec goes to the engine, so the engine never receives forget-set text from
the request path. Clients may not set ``targets``.

What a client may do with each set is the operator's :class:`ForgetSetPolicy` (server/config.py
``[forget_sets.NAME]``): the threshold a request gets when it sends none, and the range it may
pick from. Errors never name a set the operator did not make public.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import Field, FiniteFloat, ValidationInfo, field_validator, model_validator

from ..params import CorrectionParams
from .continuation import DEFAULT_EVERY, DEFAULT_TAU, DEFAULT_WINDOW
from .gate import DEFAULT_THRESHOLD
from .policy import DEFAULT_ON_MATCH, DEFAULT_REFUSAL, OnMatch, stricter_or_equal
from .semantic import DEFAULT_DELTA, DEFAULT_LAMBDA

#: Validation context key: ``{forget set name: number of entries}`` the deployment declares.
FORGET_SETS_CONTEXT = "forget_sets"
#: Validation context key (server only): ``{forget set name: ForgetSetPolicy}``.
POLICIES_CONTEXT = "forget_set_policies"
#: Validation context key, true only where the gate's fields may be set (the engine process).
GATED_CONTEXT = "unlearning_gated"
#: What errors, metrics and reports call a set whose name is not public.
UNDISCLOSED = "undisclosed"


@dataclass(frozen=True)
class ForgetSetPolicy:
    """The operator's rules for one forget set. A client that may raise the threshold can turn
    the gate off; one that may move it at all can bisect it on the reported decision."""

    threshold: float = DEFAULT_THRESHOLD
    min_threshold: float = DEFAULT_THRESHOLD
    max_threshold: float = DEFAULT_THRESHOLD
    #: Reports carry the score, threshold and counts (a similarity oracle) when true.
    report_detail: bool = False
    #: What clients may see the set called (its name, an alias); None: :data:`UNDISCLOSED`.
    public_label: str | None = None
    #: Whether requests may name the set (its name is public, not just an alias).
    public_name: bool = False
    #: What an open gate does (:mod:`.policy`); requests may only make it stricter.
    on_match: OnMatch = DEFAULT_ON_MATCH
    #: The response's text under ``refuse``.
    refusal: str = DEFAULT_REFUSAL

    @property
    def label(self) -> str:
        return self.public_label or UNDISCLOSED


class UnlearningParams(CorrectionParams):
    #: Name of a configured forget set.
    forget_set: str
    #: Gate threshold on MiniLM cosine similarity between the request and the set's entries;
    #: the set's policy gives the default and the bounds.
    threshold: float = Field(DEFAULT_THRESHOLD, ge=0, le=1)
    #: Soft filter: candidates at least this similar to a forbidden word are banned.
    delta: float = Field(DEFAULT_DELTA, ge=0, le=1)
    #: Soft filter: lambda, the logit penalty per unit of similarity below ``delta``.
    penalty: FiniteFloat = Field(DEFAULT_LAMBDA, ge=0)
    #: Soft filter on or off (the hard trie filter always runs).
    soft: bool = True
    #: Continuation check (:mod:`.continuation`): its semantic part's period ``k`` in steps,
    #: window ``W`` in tokens and ban threshold ``tau``; ``continuation = true`` turns its
    #: semantic part on (the lexical part, like the trie, always runs). Off by default: it
    #: showed no measurable effect on the unlearning eval and costs most of the plugin's time
    #: (docs/evals/unlearning.md, docs/benchmarks.md).
    continuation: bool = False
    check_every: int = Field(DEFAULT_EVERY, ge=1, le=64)
    check_window: int = Field(DEFAULT_WINDOW, ge=1, le=64)
    check_threshold: float = Field(DEFAULT_TAU, ge=0, le=1)
    #: What an open gate does (:mod:`.policy`); None: the set's policy. Only as strict or
    #: stricter than the set's (and the profile's); the server writes the one in force.
    on_match: OnMatch | None = None
    #: Set by the gate: indices of the retrieved entries (empty: decode unchanged).
    targets: tuple[int, ...] | None = None

    @model_validator(mode="before")
    @classmethod
    def _policy_threshold(cls, data: Any, info: ValidationInfo) -> Any:
        """A request that sends no threshold gets its set's."""
        policies = (info.context or {}).get(POLICIES_CONTEXT) or {}
        if isinstance(data, dict) and "threshold" not in data:
            name = data.get("forget_set")
            policy = policies.get(name) if isinstance(name, str) else None
            if policy is not None:
                return {**data, "threshold": policy.threshold}
        return data

    @field_validator("forget_set")
    @classmethod
    def _known_set(cls, name: str, info: ValidationInfo) -> str:
        known = (info.context or {}).get(FORGET_SETS_CONTEXT)
        if known is not None and name not in known:
            # Never the configured names: they can say what a set holds.
            policies = (info.context or {}).get(POLICIES_CONTEXT) or {}
            public = sorted(n for n, p in policies.items() if p.public_name)
            listed = f" (forget sets you may name: {', '.join(public)})" if public else ""
            raise ValueError(f"not a forget set this server offers{listed}")
        return name

    @field_validator("threshold")
    @classmethod
    def _within_bounds(cls, threshold: float, info: ValidationInfo) -> float:
        policies = (info.context or {}).get(POLICIES_CONTEXT) or {}
        policy = policies.get(info.data.get("forget_set"))
        if policy is not None and not policy.min_threshold <= threshold <= policy.max_threshold:
            if policy.min_threshold == policy.max_threshold:
                raise ValueError("is fixed by this server for this forget set; omit it")
            raise ValueError(
                f"must lie between {policy.min_threshold} and {policy.max_threshold} for this "
                "forget set"
            )
        return threshold

    @field_validator("on_match")
    @classmethod
    def _no_weaker(cls, on_match: OnMatch | None, info: ValidationInfo) -> OnMatch | None:
        policies = (info.context or {}).get(POLICIES_CONTEXT) or {}
        policy = policies.get(info.data.get("forget_set"))
        if (
            on_match is not None
            and policy is not None
            and not stricter_or_equal(on_match, policy.on_match)
        ):
            raise ValueError(
                f"may only make this forget set's '{policy.on_match}' stricter "
                "(steer < abstain < refuse)"
            )
        if (
            on_match == "abstain"
            and policy is not None
            and policy.on_match != "abstain"
            and not policy.report_detail
        ):
            # The phrase shows where the model's most likely token was blocked: the oracle a
            # set without report_detail keeps from clients (docs/security.md).
            raise ValueError(
                "'abstain' would show where this forget set's filters block the model's most "
                "likely token, which the operator keeps private; 'refuse' is allowed, or the "
                "operator may set abstain for the set"
            )
        return on_match

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
            raise ValueError("entry index out of range")
        return targets
