"""Copilot rectification as a per-step correction (decoding/contract.py): its copilots by
name, and the size of the rectifications it applied, per request."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ..aux.runner import runner_dtype
from ..contract import Correction, EngineSetup, Figure
from ..pipeline import Row
from .params import COPILOTS_CONTEXT, CopilotParams
from .plugin import CopilotRectification
from .runner import CopilotRunner


class CopilotCorrection(Correction):
    name = CopilotRectification.name
    params = CopilotParams
    #: Per step: 1, and the mean and largest ``|lambda * f|`` over the vocabulary.
    figures = (Figure("steps"), Figure("abs_sum"), Figure("abs_max", "max"))

    def context(self, deployment: Any) -> Mapping[str, Any]:
        return {COPILOTS_CONTEXT: set(deployment.copilots)}

    def plugin(self, setup: EngineSetup) -> CopilotRectification:
        record = setup.recorder(self.name)

        def observe(rows: Sequence[Row], mean: torch.Tensor, top: torch.Tensor) -> None:
            record(rows, {"steps": torch.ones(len(rows)), "abs_sum": mean, "abs_max": top})

        sources = {
            name: CopilotRunner(
                entry.path,
                device=setup.device,
                dtype=runner_dtype(entry.dtype, setup.dtype, setup.device),
            )
            for name, entry in setup.deployment.copilots.items()
        }
        return CopilotRectification(sources, observe=observe)

    def report(self, params: Any, figures: Mapping[str, float]) -> dict[str, Any]:
        """``{"steps", "mean_abs_rectification", "max_abs_rectification"}`` over the request's
        steps (all its choices): ``|lambda * f|`` over the vocabulary, in the fusion space's
        units."""
        steps = int(figures["steps"])
        return {
            "steps": steps,
            "mean_abs_rectification": figures["abs_sum"] / steps if steps else 0.0,
            "max_abs_rectification": figures["abs_max"],
        }


CORRECTION = CopilotCorrection()
