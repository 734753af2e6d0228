"""Verifier-triggered refinement: generate, verify, regenerate with feedback, select.

Engine-agnostic: the loop (loop.py) takes a ``generate`` callable (generation.py) that the
server backs with its engine. Verifiers (verifier.py) judge candidates: the pure built-in types
are listed in verifier_types.py, specs are read and built against a registry of types in
specs.py; strategies (strategies.py) decide what to generate next. Importing this package
registers nothing: the server drives refinement as a request-level wrapper
(server/refinement/).
"""

from .generation import GenerateFn, Generation, GenerationRefused, Message
from .loop import NoCandidate, Outcome, refine, select
from .params import MAX_ROUNDS_CONTEXT, STRATEGIES, RefinementParams
from .run import Candidate, RefinementRun
from .specs import build_verifier, parse_verifier
from .verdict import Verdict
from .verifier import (
    Cost,
    Services,
    Verifier,
    VerifierParams,
    VerifierType,
    VerifierTypes,
    VerifyContext,
)
from .verifier_types import BUILTIN_VERIFIER_TYPES, VERIFIER_TYPES_CONTEXT

__all__ = [
    "BUILTIN_VERIFIER_TYPES",
    "MAX_ROUNDS_CONTEXT",
    "STRATEGIES",
    "VERIFIER_TYPES_CONTEXT",
    "Candidate",
    "Cost",
    "GenerateFn",
    "Generation",
    "GenerationRefused",
    "Message",
    "NoCandidate",
    "Outcome",
    "RefinementParams",
    "RefinementRun",
    "Services",
    "Verdict",
    "Verifier",
    "VerifierParams",
    "VerifierType",
    "VerifierTypes",
    "VerifyContext",
    "build_verifier",
    "parse_verifier",
    "refine",
    "select",
]
