"""The contract of a per-step correction: the one object each correction's folder exports.

A per-step correction (decoding/proxy_tuning/, decoding/copilot/, decoding/unlearning/) is a
:class:`Correction`: it names itself, declares the pydantic model of its request parameters,
what the deployment tells request validation about it (:meth:`Correction.context`), the
per-row figures its step plugin records for the response's report (:attr:`Correction.figures`),
how it builds that plugin in an engine process (:meth:`Correction.plugin`) and how it turns
the recorded figures into its part of the report (:meth:`Correction.report`). The explicit list
in decoding/registry.py is the only place that lists corrections; everything else (validation,
the wire format, the per-row figures' layout, reports, metrics labels, the pipeline's order) is
derived from it. docs/architecture.md shows the path of a request through these hooks.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, get_args

import torch

from .params import CorrectionParams
from .pipeline import Row, StepPlugin

#: How a figure's per-step values combine over a request's steps.
Reduce = Literal["sum", "max"]
REDUCES: tuple[str, ...] = get_args(Reduce)


@dataclass(frozen=True)
class Figure:
    """A per-row number a step plugin records each step, combined over the request's steps
    (and its choices) into the report."""

    name: str
    reduce: Reduce = "sum"


#: ``record(rows, {figure name: [len(rows)] values})``: one step's figures for some rows.
Record = Callable[[Sequence[Row], Mapping[str, torch.Tensor]], None]


@dataclass(frozen=True)
class EngineSetup:
    """What an engine process offers a correction building its step plugin."""

    #: What the server declared (adapters/manifest.py ``DeploymentManifest``): auxiliary
    #: models, copilots, forget sets by name.
    deployment: Any
    #: Where the engine computes, and in which dtype.
    device: torch.device
    dtype: torch.dtype
    #: The served model's tokenizer (a path or name ``transformers`` loads).
    tokenizer: str
    #: Width of the engine's logits (the vocabulary, padded as the model pads it).
    vocab_size: int
    #: ``recorder(name)`` is the :data:`Record` callback of the correction ``name``.
    recorder: Callable[[str], Record]


class Correction(ABC):
    """A per-step correction, whole: see the module docstring."""

    #: The key of the request's ``correction`` object, and the plugin's name in metrics.
    name: ClassVar[str]
    #: The model validating ``correction.<name>``.
    params: ClassVar[type[CorrectionParams]]
    #: Per-row figures the plugin records (names unique within the correction).
    figures: ClassVar[tuple[Figure, ...]] = ()

    def context(self, deployment: Any) -> Mapping[str, Any]:
        """Validation-context entries for this correction's params on ``deployment`` (e.g. the
        names a request may use)."""
        return {}

    def serves(self, deployment: Any) -> bool:
        """Whether an engine of ``deployment`` hosts this correction's plugin."""
        return True

    @abstractmethod
    def plugin(self, setup: EngineSetup) -> StepPlugin:
        """The step plugin, built once in each engine process that computes corrections."""

    def report(
        self, params: CorrectionParams, figures: Mapping[str, float]
    ) -> dict[str, Any] | None:
        """This correction's part of the response's report, from its figures combined over the
        request's steps (None: nothing to report)."""
        return None
