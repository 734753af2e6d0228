"""Guarded unlearning (Deng et al. 2025, "GUARD"): generation-time output regulation.

A request that the gate (:mod:`.gate`) finds to concern a forget set (:mod:`.forget_set`) gets
its retrieved entries' phrases (:mod:`.phrases`) blocked exactly (:mod:`.trie`) and their
meaning penalised (:mod:`.semantic`) at every step (:mod:`.plugin`); the set's ``on_match``
policy (:mod:`.policy`) decides whether the row is also forced through an abstention phrase
(:mod:`.abstain`) or the server refuses without generating. This regulates output; it
does not remove knowledge from the weights, and the forget sets must stay server-side.
"""

from .correction import CORRECTION
from .forget_set import ForgetEntry, ForgetSet, ForgetSetError, load_forget_set
from .gate import ForgetGate, GateDecision
from .params import (
    FORGET_SETS_CONTEXT,
    GATED_CONTEXT,
    POLICIES_CONTEXT,
    UNDISCLOSED,
    ForgetSetPolicy,
    UnlearningParams,
)
from .plugin import ForgetFilters, Unlearning

__all__ = [
    "CORRECTION",
    "FORGET_SETS_CONTEXT",
    "GATED_CONTEXT",
    "POLICIES_CONTEXT",
    "UNDISCLOSED",
    "ForgetEntry",
    "ForgetFilters",
    "ForgetGate",
    "ForgetSet",
    "ForgetSetError",
    "ForgetSetPolicy",
    "GateDecision",
    "Unlearning",
    "UnlearningParams",
    "load_forget_set",
]
