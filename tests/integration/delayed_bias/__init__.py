"""A toy per-step correction, added the way an operator adds one: this folder, and one line of
configuration naming :data:`CORRECTION` (``[corrections] extra``). Nothing else in corrigo
knows it; tests/integration/test_extra_correction.py serves it with the real engine.

From the row's ``from_step``-th generated token on, one token's logit is raised::

    s_v += bias * [v = token] * [t >= from_step]      (t: tokens the row has generated)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from pydantic import Field, FiniteFloat

from decoding.contract import Correction, EngineSetup, Figure, Record
from decoding.params import CorrectionParams
from decoding.pipeline import Row, StepPlugin


class DelayedBiasParams(CorrectionParams):
    token: int = Field(ge=0)
    from_step: int = Field(0, ge=0)
    bias: FiniteFloat = Field(100.0, ge=-1e4, le=1e4)


class DelayedBias(StepPlugin):
    """See the module docstring."""

    name = "delayed_bias"

    def __init__(self, record: Record) -> None:
        self.record = record

    def apply(self, logits: torch.Tensor, rows: Sequence[Row]) -> torch.Tensor:
        params = [row.params(self.name) for row in rows]
        due = torch.tensor(
            [len(row.stream.output) >= p.from_step for row, p in zip(rows, params, strict=True)]
        )
        for i, p in enumerate(params):
            if due[i] and p.token < logits.shape[-1]:
                logits[i, p.token] += p.bias
        self.record(rows, {"steps": torch.ones(len(rows)), "boosted": due.double()})
        return logits


class DelayedBiasCorrection(Correction):
    name = DelayedBias.name
    params = DelayedBiasParams
    figures = (Figure("steps"), Figure("boosted"))

    def plugin(self, setup: EngineSetup) -> DelayedBias:
        return DelayedBias(setup.recorder(self.name))

    def report(self, params: Any, figures: Mapping[str, float]) -> dict[str, Any]:
        return {"steps": int(figures["steps"]), "boosted": int(figures["boosted"])}


CORRECTION = DelayedBiasCorrection()
