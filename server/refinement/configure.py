"""The server's refinement settings, declared for validation at start-up.

Requests' refinement parameters are validated against the context this fills in: the cap on
rounds, the budget caps, the verifier tree limits, the URL allow-list, the configured judges'
names, and the server's verifier types (verifiers.py, with the operator's plugins).
"""

from __future__ import annotations

import os
from typing import Any

from decoding.refinement.generation import GenerateFn
from decoding.refinement.model_verifiers import JUDGES_CONTEXT
from decoding.refinement.params import BUDGET_CAPS_CONTEXT, MAX_ROUNDS_CONTEXT, BudgetCaps
from decoding.refinement.urls import URL_PREFIXES_CONTEXT, parse_prefix
from decoding.refinement.verifier import TREE_LIMITS_CONTEXT, TreeLimits
from decoding.refinement.verifier_types import VERIFIER_TYPES_CONTEXT

from ..config import Config
from .remote_model import configured_judges
from .verifier_plugins import load_verifiers
from .verifiers import server_verifier_types


def configure_refinement(context: dict[str, Any], config: Config) -> dict[str, GenerateFn]:
    """Load the configured custom verifiers, declare in the validation ``context`` the
    server's verifier types, the caps, the URL allow-list and the judge names requests are
    validated against; the configured judges' clients (each holding its key, read from the
    environment now: a missing one is a start-up error)."""
    context[VERIFIER_TYPES_CONTEXT] = server_verifier_types(load_verifiers(config.verifiers))
    context[MAX_ROUNDS_CONTEXT] = config.refinement.max_rounds
    context[URL_PREFIXES_CONTEXT] = tuple(
        parse_prefix(entry) for entry in config.refinement.url_prefixes
    )
    context[JUDGES_CONTEXT] = frozenset(config.judges)
    settings = config.refinement
    context[TREE_LIMITS_CONTEXT] = TreeLimits(
        nodes=settings.max_verifier_nodes,
        depth=settings.max_verifier_depth,
        costly=settings.max_costly_verifiers,
    )
    context[BUDGET_CAPS_CONTEXT] = BudgetCaps(
        max_engine_calls=settings.max_engine_calls,
        max_sandbox_seconds=settings.max_sandbox_seconds,
        max_seconds=settings.max_seconds,
    )
    return configured_judges(config.judges, os.environ)
