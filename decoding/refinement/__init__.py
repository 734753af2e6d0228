"""Verifier-triggered refinement: generate, verify, regenerate with feedback, select.

Engine-agnostic: the loop (loop.py) takes a ``generate`` callable (generation.py) that the
server backs with its engine. Verifiers (verifier.py and the modules registering types) judge
candidates; strategies (strategies.py) decide what to generate next. Importing this package
registers the ``refinement`` correction and the pure verifier types.
"""

from . import model_verifiers, text_verifiers  # noqa: F401  (register the verifier types)
from .generation import GenerateFn, Generation, GenerationRefused, Message
from .loop import Candidate, NoCandidate, Outcome, RefinementRun, refine, select
from .params import MAX_ROUNDS_CONTEXT, RefinementParams
from .verdict import Verdict
from .verifier import (
    Services,
    Verifier,
    VerifierParams,
    VerifyContext,
    build_verifier,
    parse_verifier,
    register_verifier,
)

__all__ = [
    "MAX_ROUNDS_CONTEXT",
    "Candidate",
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
    "VerifyContext",
    "build_verifier",
    "parse_verifier",
    "refine",
    "register_verifier",
    "select",
]
