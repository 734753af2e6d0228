"""A validated ``correction`` object (:class:`CorrectionSpec`) and its wire form.

A request names the corrections it wants as top-level keys of one object::

    {"proxy_tuning": {...}, "unlearning": {...}, "refinement": {...}}

Per-step corrections (decoding/registry.py) run inside the engine; their validated parameters
cross into the engine process as one JSON string in ``SamplingParams.extra_args`` (vLLM only
carries flat ``str | int | float | list`` values there), under :data:`WIRE_KEY`. Refinement
wraps whole generations in the server and never crosses.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .params import CorrectionParams
from .refinement.params import REFINEMENT, RefinementParams

#: Key of ``SamplingParams.extra_args`` (the OpenAI field ``vllm_xargs``) that carries the spec.
WIRE_KEY = "corrigo"


@dataclass(frozen=True)
class CorrectionSpec:
    """A validated correction: the per-step corrections by name, in pipeline order, and the
    request-level refinement, if asked for."""

    steps: Mapping[str, CorrectionParams] = field(default_factory=dict)
    refinement: RefinementParams | None = None

    @property
    def names(self) -> tuple[str, ...]:
        """The requested corrections: per-step ones in pipeline order, then refinement."""
        return (*self.steps, *((REFINEMENT,) if self.refinement is not None else ()))

    def __bool__(self) -> bool:
        return bool(self.steps) or self.refinement is not None

    def with_step(self, name: str, params: CorrectionParams) -> CorrectionSpec:
        """The spec with the per-step correction ``name``'s parameters replaced."""
        return CorrectionSpec({**self.steps, name: params}, self.refinement)

    def to_json(self) -> dict[str, Any]:
        out = {name: params.model_dump(mode="json") for name, params in self.steps.items()}
        if self.refinement is not None:
            out[REFINEMENT] = self.refinement.model_dump(mode="json")
        return out

    def to_wire(self) -> str:
        """The per-step corrections, as the engine reads them (:data:`WIRE_KEY`)."""
        steps = {name: params.model_dump(mode="json") for name, params in self.steps.items()}
        return json.dumps(steps, separators=(",", ":"), sort_keys=True)
