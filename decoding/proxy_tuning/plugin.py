"""Proxy-tuning (Liu et al. 2024, "Tuning Language Models by Proxy").

Each step, on raw logits, before any penalty or warper::

    s = s_base + sum_k alpha * w_k * (s_expert_k - s_anti_expert_k)

where ``(expert_k, anti_expert_k, w_k)`` are the request's pairs (one pair with ``w = 1`` in
the common case) and the expert/anti-expert logits come from auxiliary models stepped on the
same token stream as the base: the same generated tokens after the same rendered prompt, or
after the model's own rendering of a chat request where its ``chat_template`` declares one
(decoding/proxy_tuning/prompts.py). An auxiliary model with extra trailing vocabulary rows is
truncated to the base's vocabulary, as the reference
implementation does.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Annotated, Protocol

import torch
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    FiniteFloat,
    ValidationInfo,
    field_validator,
    model_validator,
)

from ..aux.overlap import Inline, Overlap, Pending
from ..params import SERVER_SET_CONTEXT, CorrectionParams
from ..pipeline import Row, StepPlugin, TokenStream

#: Validation context key listing the auxiliary model names the deployment declares.
AUX_MODELS_CONTEXT = "aux_models"


def _known_model(name: str | None, info: ValidationInfo) -> str | None:
    known = (info.context or {}).get(AUX_MODELS_CONTEXT)
    if name is not None and known is not None and name not in known:
        listed = ", ".join(sorted(known)) or "none"
        raise ValueError(f"unknown auxiliary model '{name}' (declared: {listed})")
    return name


class ProxyPair(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    expert: str
    anti_expert: str
    weight: FiniteFloat = 1.0

    _check_models = field_validator("expert", "anti_expert")(_known_model)


class ProxyTuningParams(CorrectionParams):
    """``{"expert", "anti_expert", "alpha"}`` or ``{"pairs": [...], "alpha"}``."""

    expert: str | None = None
    anti_expert: str | None = None
    pairs: list[ProxyPair] | None = Field(None, min_length=1)
    alpha: FiniteFloat = 1.0
    #: Set by the server (decoding/proxy_tuning/prompts.py), never by clients: the prompt ids
    #: of the auxiliary models that see the request in their own format, by model. The others
    #: step on the engine row's prompt.
    prompts: dict[str, list[Annotated[int, Field(ge=0)]]] | None = None

    _check_models = field_validator("expert", "anti_expert")(_known_model)

    @field_validator("prompts")
    @classmethod
    def _server_set(
        cls, value: dict[str, list[int]] | None, info: ValidationInfo
    ) -> dict[str, list[int]] | None:
        if value is None:
            return None
        if not (info.context or {}).get(SERVER_SET_CONTEXT):
            raise ValueError("is set by the server, not by clients")
        for name, ids in value.items():
            _known_model(name, info)
            if not ids:
                raise ValueError(f"the prompt of '{name}' is empty")
        return value

    @model_validator(mode="after")
    def _one_form(self) -> ProxyTuningParams:
        single = self.expert is not None or self.anti_expert is not None
        if single and self.pairs is not None:
            raise ValueError("give either 'expert' and 'anti_expert', or 'pairs', not both")
        if self.pairs is None and (self.expert is None or self.anti_expert is None):
            raise ValueError("needs both 'expert' and 'anti_expert' (or 'pairs')")
        return self

    @cached_property
    def coefficients(self) -> dict[str, float]:
        """Each auxiliary model's net coefficient: ``sum_k alpha * w_k * ([m = expert_k] -
        [m = anti_expert_k])``. A model that is both expert and anti-expert cancels to 0."""
        pairs = self.pairs or [ProxyPair(expert=self.expert, anti_expert=self.anti_expert)]
        net: dict[str, float] = defaultdict(float)
        for pair in pairs:
            net[pair.expert] += self.alpha * pair.weight
            net[pair.anti_expert] -= self.alpha * pair.weight
        return dict(net)


class LogitsSource(Protocol):
    """An auxiliary model stepped in lockstep with the engine (decoding/aux/runner.py)."""

    vocab_size: int

    def step(self, streams: Mapping[int, TokenStream]) -> torch.Tensor:
        """Next-token logits ``[len(streams), vocab_size]`` for each uid's stream, in order."""

    def release(self, uid: int) -> None: ...


@dataclass(frozen=True)
class _Ahead:
    """An auxiliary model's forward started by :meth:`ProxyTuning.prepare`."""

    lengths: tuple[tuple[int, int], ...]  # (uid, stream length) it was computed for, in order
    logits: Pending


def _stream(row: Row, model: str) -> TokenStream:
    """What ``model`` steps on for ``row``: its own prompt, when the server rendered one
    (decoding/proxy_tuning/prompts.py), then the row's generated tokens; else the row's stream."""
    own = (row.params(ProxyTuning.name).prompts or {}).get(model)
    return row.stream if own is None else TokenStream(own, row.stream.output)


def _lengths(streams: Mapping[int, TokenStream]) -> tuple[tuple[int, int], ...]:
    return tuple((uid, len(stream)) for uid, stream in streams.items())


class ProxyTuning(StepPlugin):
    """``s += sum_m c_m * s_m`` with ``c_m`` from :meth:`ProxyTuningParams.coefficients`:
    one batched forward per auxiliary model per step, over the rows that use it.

    :meth:`prepare` submits every auxiliary model's forward for the coming step to the model's
    lane of ``overlap`` (decoding/aux/overlap.py), so, where the device allows, they run beside the
    engine's own forward and beside each other; :meth:`apply` takes their results. A forward
    whose rows or streams no longer match the step is discarded for a fresh one on the same
    lane (the model's cache stays valid either way), so results never depend on it.
    """

    name = "proxy_tuning"

    def __init__(self, sources: Mapping[str, LogitsSource], overlap: Overlap | None = None):
        self.sources = sources
        self.overlap = Inline() if overlap is None else overlap
        self._ahead: dict[str, _Ahead] = {}

    def _users(self, rows: Sequence[Row]) -> dict[str, list[tuple[int, Row, float]]]:
        """Per auxiliary model: (position in ``rows``, row, coefficient) of the rows using it."""
        users: dict[str, list[tuple[int, Row, float]]] = defaultdict(list)
        for i, row in enumerate(rows):
            for model, coef in row.params(self.name).coefficients.items():
                users[model].append((i, row, coef))
        return users

    def prepare(self, rows: Sequence[Row]) -> None:
        self._settle()
        if not self.sources:  # no auxiliary models declared: nothing to start
            return
        for model, entries in self._users(rows).items():
            streams = {row.uid: _stream(row, model).snapshot() for _, row, _ in entries}
            pending = self.overlap.submit(model, self.sources[model].step, streams)
            self._ahead[model] = _Ahead(_lengths(streams), pending)

    def apply(self, logits: torch.Tensor, rows: Sequence[Row]) -> torch.Tensor:
        vocab = logits.shape[-1]
        ahead, self._ahead = self._ahead, {}
        for model, entries in self._users(rows).items():
            # Every row's stream advances in the model, even when its coefficient is 0 (expert
            # and anti-expert the same), so its cache stays in step.
            streams = {row.uid: _stream(row, model) for _, row, _ in entries}
            started = ahead.pop(model, None)
            if started is not None and started.lengths == _lengths(streams):
                aux = started.logits.result()
            else:  # on the model's lane, after the forward started ahead
                aux = self.overlap.submit(model, self.sources[model].step, streams).result()
            at = torch.tensor([i for i, _, _ in entries], device=logits.device)
            coef = torch.tensor(
                [c for _, _, c in entries], device=logits.device, dtype=logits.dtype
            )
            logits.index_add_(0, at, coef[:, None] * aux[:, :vocab].to(logits.dtype))
        for unused in ahead.values():
            unused.logits.wait()
        return logits

    def _settle(self) -> None:
        """Wait for forwards started ahead and never used (the step they were for did not
        come), so that rows are released only from a model no forward is using."""
        for unused in self._ahead.values():
            unused.logits.wait()
        self._ahead = {}

    def release(self, uid: int) -> None:
        self._settle()
        for source in self.sources.values():
            source.release(uid)
