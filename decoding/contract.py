"""The contract of a per-step correction: the one object each correction's folder exports.

A per-step correction (decoding/proxy_tuning/, decoding/copilot/, decoding/unlearning/) is a
:class:`Correction`: it names itself, declares the pydantic model of its request parameters,
what the deployment tells request validation about it (:meth:`Correction.context`), the
per-row figures its step plugin records for the response's report (:attr:`Correction.figures`),
how it builds that plugin in an engine process (:meth:`Correction.plugin`), how it turns the
recorded figures into its part of the report (:meth:`Correction.report`), and, optionally, a
step the server runs on each request that asks for it before the engine sees it
(:meth:`Correction.admission`: the unlearning gate). The explicit list
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


@dataclass(frozen=True)
class Admitted:
    """What an :class:`AdmissionStep` decided for one request."""

    #: The correction's parameters to send to the engine (e.g. with the gate's fields set).
    params: CorrectionParams
    #: The step's own record of the request, for its report.
    state: Any
    #: Set when the request is answered with this text and no generation
    #: (``finish_reason = "content_filter"``).
    answer: str | None = None


class AdmissionStep(ABC):
    """A correction's work in the server on each request that asks for it, before the engine:
    cheap checks before the request waits for an admission slot, the real work once it holds
    one (so the admission queue bounds it), and the correction's report at the end. Raises
    :class:`~decoding.params.RequestRefused` to refuse a request."""

    def applies(self, params: CorrectionParams) -> bool:
        """Whether a request with these ``params`` gives the step work to do (by default,
        every request that asks for the correction). A route that cannot run the step (one
        whose body it cannot read) refuses exactly the requests it applies to."""
        return True

    @abstractmethod
    def prepare(self, params: CorrectionParams, body: Mapping[str, Any]) -> Any:
        """Checks on the request ``body`` before admission; what :meth:`admit` needs."""

    @abstractmethod
    async def admit(self, params: CorrectionParams, prepared: Any) -> Admitted:
        """The request holds an admission slot: decide (on the event loop: blocking work goes
        to a thread)."""

    @abstractmethod
    def report(self, admitted: Admitted, figures: Mapping[str, float] | None) -> dict[str, Any]:
        """The correction's part of the response's report, from the figures its plugin recorded
        (None: none arrived), once the response is complete."""


@dataclass(frozen=True)
class ServerSetup:
    """What the server offers a correction building its admission step."""

    #: What the server loaded for this deployment (server/deployment.py ``Deployment``).
    deployment: Any
    #: The server's configuration (server/config.py ``Config``).
    config: Any
    #: The server's Prometheus series (server/metrics.py ``ServerMetrics``).
    metrics: Any


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
        request's steps (None: nothing to report). With an admission step, that step's report
        is used instead."""
        return None

    def admission(self, setup: ServerSetup) -> AdmissionStep | None:
        """The server-side step on each request asking for this correction (None: none)."""
        return None
