"""The built-in pure verifier types, listed explicitly, and where a request's types come from.

Like vLLM's list of built-in logits processors: this tuple is the whole set of verifier types
decoding/ provides, and nothing registers a type by being imported. A server adds the types
that reach the outside world and the operator's plugins (server/refinement/verifiers.py) and
declares the result in the validation context under :data:`VERIFIER_TYPES_CONTEXT`; without
one (library use, tests) specs are read against these built-ins.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .model_verifiers import JUDGE, P_TRUE
from .text_verifiers import ANSWER, JSON_SCHEMA, REGEX
from .verifier import VerifierTypes

#: The pure verifier types: they read the candidate's text, or ask a model through the
#: services the server passes (decoding/refinement/verifier.py, ``Services``).
BUILTIN_VERIFIER_TYPES = VerifierTypes((REGEX, JSON_SCHEMA, ANSWER, P_TRUE, JUDGE))

#: Validation context key: the server's :class:`VerifierTypes`.
VERIFIER_TYPES_CONTEXT = "verifier_types"


def verifier_types_in(context: Mapping[str, Any] | None) -> VerifierTypes:
    """The verifier types a validation ``context`` declares (the built-ins when none)."""
    return (context or {}).get(VERIFIER_TYPES_CONTEXT) or BUILTIN_VERIFIER_TYPES
