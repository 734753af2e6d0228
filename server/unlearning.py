"""The unlearning gate in the server: decide per request, forward only what the filters need.

For a request whose ``correction`` names ``unlearning``, the gate (decoding/unlearning/gate.py)
reads all of the request's text (every message, system and context included, or the prompt)
and decides whether it concerns the forget set. The spec sent to the engine then carries the
retrieved entries' indices (none when the gate stays closed: the request decodes unchanged),
never the forget set's text. When the response is complete the counts the engine wrote in the
request's report slot (adapters/request_reports.py) go into its report and metrics.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from decoding.correction import CorrectionSpec
from decoding.unlearning import ForgetGate, ForgetSet, GateDecision, UnlearningParams
from decoding.unlearning.gate import Embedder

from .metrics import ServerMetrics

NAME = "unlearning"
#: Gate decisions as metric labels and in the report.
FILTER, PASS = "filter", "pass"


@dataclass
class Admission:
    """One gated request: its decision and (once finished) its report."""

    params: UnlearningParams
    decision: GateDecision
    report: dict[str, Any] | None = None


def request_texts(body: Mapping[str, Any]) -> list[str]:
    """Every piece of text a chat or completion request carries (messages of every role, text
    content parts, prompts); token-id prompts carry none."""
    texts: list[str] = []
    for message in body.get("messages") or ():
        content = message.get("content") if isinstance(message, Mapping) else None
        if isinstance(content, str):
            texts.append(content)
        elif isinstance(content, list):
            texts.extend(
                part["text"]
                for part in content
                if isinstance(part, Mapping) and isinstance(part.get("text"), str)
            )
    prompt = body.get("prompt")
    prompts = [prompt] if isinstance(prompt, str) else prompt if isinstance(prompt, list) else ()
    texts.extend(p for p in prompts if isinstance(p, str))
    return texts


class UnlearningGate:
    """The deployment's forget sets, embedded once, and the per-request admission."""

    def __init__(
        self,
        forget_sets: Mapping[str, ForgetSet],
        embedder: Embedder,
        metrics: ServerMetrics,
    ) -> None:
        self.gates = {name: ForgetGate(s, embedder) for name, s in forget_sets.items()}
        self.metrics = metrics

    async def admit(
        self, spec: CorrectionSpec, body: Mapping[str, Any]
    ) -> tuple[CorrectionSpec, Admission | None]:
        """The spec to send to the engine, with the gate's fields filled in."""
        params = spec.plugins.get(NAME)
        if params is None:
            return spec, None
        assert isinstance(params, UnlearningParams)
        gate = self.gates[params.forget_set]
        # MiniLM takes milliseconds to tens of milliseconds: keep the event loop free.
        decision = await asyncio.to_thread(gate.decide, request_texts(body), params.threshold)
        label = FILTER if decision.opened else PASS
        self.metrics.unlearning_gate.labels(params.forget_set, label).inc()
        gated = params.model_copy(update={"targets": decision.targets})
        plugins = {**spec.plugins, NAME: gated}
        return CorrectionSpec(plugins), Admission(params, decision)

    def finish(self, admission: Admission, figures: Mapping[str, float] | None) -> dict[str, Any]:
        """The request's report, from the figures the engine recorded for it (once its
        generation is over; idempotent)."""
        if admission.report is None:
            figures = figures or {}
            counts = {
                "steps": int(figures.get("unlearning_steps", 0)),
                "tokens_blocked": int(figures.get("tokens_blocked", 0)),
                "tokens_penalized": int(figures.get("tokens_penalized", 0)),
            }
            self.metrics.tokens_blocked.inc(counts["tokens_blocked"])
            decision = admission.decision
            admission.report = {
                "forget_set": admission.params.forget_set,
                "gate": {
                    "decision": FILTER if decision.opened else PASS,
                    "score": round(decision.score, 4),
                    "threshold": admission.params.threshold,
                },
                "entries_retrieved": len(decision.targets),
                **counts,
            }
        return admission.report
