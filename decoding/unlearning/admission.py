"""The unlearning gate, unlearning's admission step in the server (decoding/contract.py
``AdmissionStep``): decide per request, forward only what the filters need.

For a request whose ``correction`` names ``unlearning``, the gate (decoding/unlearning/gate.py)
reads all of the request's text (every message, system and context included, tool definitions,
documents, template arguments, the prompt) and decides whether it concerns the forget set. The
spec sent to the engine then carries the retrieved entries' indices (none when the gate stays
closed: the request decodes unchanged) and the ``on_match`` policy in force (the strictest of
the set's and the request's: decoding/unlearning/policy.py; an open gate under ``refuse`` is
answered with the set's refusal, without the engine), never the forget set's text.
When the response is complete the counts the engine sent under the request's report ticket
(adapters/request_reports.py) go into its report and metrics.

Hostile clients (docs: the operator's ``[forget_sets.NAME]`` policy). The gate fails closed:
input it cannot read (token ids, prompt embeddings, a request's own chat template, images) or
more text than ``[limits] max_gate_chars`` / ``max_gate_pieces`` is refused, never let through
ungated. :meth:`UnlearningGate.prepare` does these cheap checks before admission;
:meth:`UnlearningGate.admit` embeds after it (so the admission queue bounds the gate's work),
on the gate's own thread. Reports carry the decision only unless the set's policy allows
detail, and metric labels carry a set's public label, never a private name.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from ..contract import AdmissionStep, Admitted
from ..params import RequestRefused
from .batcher import EncodeBatcher
from .classifier import TrainedGate
from .forget_set import ForgetSet
from .gate import Embedder, ForgetGate, GateDecision, chunks
from .params import ForgetSetPolicy, UnlearningParams
from .piece_cache import PieceCache
from .plugin import Unlearning
from .policy import OnMatch, outcome, strictest

NAME = Unlearning.name
#: Gate decisions as metric labels and in the report.
FILTER, PASS = "filter", "pass"
#: Request fields whose text a chat template may render into the prompt: the gate reads them.
GATED_FIELDS = ("messages", "prompt", "suffix", "tools", "documents", "chat_template_kwargs")
#: Request fields that carry a prompt the gate cannot read: refused with unlearning.
UNGATEABLE_FIELDS = ("prompt_embeds", "chat_template")
#: Content parts the gate reads; any other part (an image, audio) is refused with unlearning.
TEXT_PARTS = frozenset({"text", "input_text", "output_text", "refusal"})
#: Keys of a message whose values are structure, not text.
_STRUCTURAL = frozenset({"role", "type", "id", "tool_call_id"})
#: Error code of a gated request carrying more text than the gate reads.
TOO_LONG = "unlearning_input_too_long"


def policies(configs: Mapping[str, Any]) -> dict[str, ForgetSetPolicy]:
    """Each declared set's policy (server/config.py ``[forget_sets.NAME]`` sections)."""
    out = {}
    for name, c in configs.items():
        out[name] = ForgetSetPolicy(
            threshold=c.threshold,
            min_threshold=c.threshold if c.min_threshold is None else c.min_threshold,
            max_threshold=c.threshold if c.max_threshold is None else c.max_threshold,
            report_detail=c.report_detail,
            public_label=name if c.public_name else c.alias,
            public_name=c.public_name,
            on_match=c.on_match,
            refusal=c.refusal,
        )
    return out


class UngateableInput(ValueError):
    """Request input the gate cannot read; ``param`` names the field."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


def request_texts(body: Mapping[str, Any]) -> list[str]:
    """Every piece of text a chat or completion request carries into its prompt: the string
    values of its messages (every role, content parts, tool calls), tool definitions, documents
    and template arguments (their keys too), and prompts. Raises :class:`UngateableInput` for a
    prompt the gate cannot read (token ids, embeddings, non-text parts, a request's template)."""
    for field in UNGATEABLE_FIELDS:
        if body.get(field) is not None:
            raise UngateableInput(
                f"'{field}' cannot be combined with correction.unlearning: the gate reads text.",
                field,
            )
    texts: list[str] = []
    for field in GATED_FIELDS:
        value = body.get(field)
        if value is None:
            continue
        if field == "prompt" and not _text_prompt(value):
            raise UngateableInput(
                "With correction.unlearning the prompt must be text (a string or a list of "
                "strings): the gate cannot read token ids.",
                "prompt",
            )
        if field == "messages":
            _check_parts(value)
        _collect(value, texts, field, keys=field not in ("messages", "prompt"))
    return texts


def _check_parts(messages: Any) -> None:
    """Refuse content parts that are not text (an image can spell the question)."""
    for message in messages if isinstance(messages, list) else ():
        content = message.get("content") if isinstance(message, Mapping) else None
        for part in content if isinstance(content, list) else ():
            if not isinstance(part, Mapping):
                continue
            kind = part.get("type")
            if (isinstance(kind, str) and kind in TEXT_PARTS) or (
                kind is None and set(part) <= {"text"}
            ):
                continue
            shown = kind if isinstance(kind, str) and len(kind) <= 32 else "non-text"
            raise UngateableInput(
                f"'messages' holds a '{shown}' part; with correction.unlearning this server "
                "accepts text only: the gate cannot read other media.",
                "messages",
            )


def _text_prompt(prompt: Any) -> bool:
    return isinstance(prompt, str) or (
        isinstance(prompt, list) and all(isinstance(p, str) for p in prompt)
    )


def _collect(value: Any, texts: list[str], field: str, *, keys: bool) -> None:
    """Every string under ``value`` (iteratively: the nesting is the client's)."""
    stack = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, str):
            texts.append(node)
        elif isinstance(node, list):
            stack.extend(reversed(node))
        elif isinstance(node, Mapping):
            for key, item in node.items():
                if keys and isinstance(key, str):
                    texts.append(key)
                if field == "messages" and key in _STRUCTURAL:
                    continue
                stack.append(item)


@dataclass(frozen=True)
class GateJob:
    """A gated request, checked and split before admission; embedded after it."""

    params: UnlearningParams
    pieces: tuple[str, ...]


@dataclass
class Admission:
    """One gated request: its decision, the policy in force and (once finished) its report."""

    params: UnlearningParams
    decision: GateDecision
    #: The strictest of the set's, the profile's and the request's ``on_match``.
    on_match: OnMatch
    report: dict[str, Any] | None = None

    @property
    def refused(self) -> bool:
        """The request is answered with the set's refusal, without generation."""
        return self.decision.opened and self.on_match == "refuse"


class UnlearningGate(AdmissionStep):
    """The deployment's forget sets, embedded once, their policies, and the per-request
    admission."""

    def __init__(
        self,
        forget_sets: Mapping[str, ForgetSet],
        embedder: Embedder,
        metrics: Any,
        policies: Mapping[str, ForgetSetPolicy],
        limits: Any,
        trained: Mapping[str, TrainedGate] | None = None,
    ) -> None:
        """``metrics``: the server's (server/metrics.py: ``unlearning_gate``,
        ``unlearning_gate_score``, ``tokens_blocked``, ``unlearning_outcomes``); ``limits``: its
        ``[limits]`` (``max_gate_chars``, ``max_gate_pieces``, ``gate_cache_pieces``);
        ``trained``: the sets' trained gates (decoding/unlearning/classifier.py), which decide
        instead of the cosine gate."""
        trained = trained or {}
        self.gates: dict[str, ForgetGate | TrainedGate] = {
            name: trained.get(name) or ForgetGate(s, embedder) for name, s in forget_sets.items()
        }
        self.metrics = metrics
        self.policies = dict(policies)
        self.max_chars = limits.max_gate_chars
        self.max_pieces = limits.max_gate_pieces
        # MiniLM serialises its encodes (decoding/unlearning/embeddings.py): one thread of its own, so
        # queued gate work never holds the event loop's default executor. Concurrent requests'
        # pieces are embedded in one forward per embedder (decoding/unlearning/batcher.py),
        # pieces read before not again where the operator allows it
        # (decoding/unlearning/piece_cache.py: a hit is visible in the latency).
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="unlearning-gate")
        self._batchers: dict[int, EncodeBatcher] = {}
        for gate in self.gates.values():
            if id(gate.embedder) not in self._batchers:
                cache = PieceCache(limits.gate_cache_pieces) if limits.gate_cache_pieces else None
                self._batchers[id(gate.embedder)] = EncodeBatcher(
                    gate.embedder, self._executor, cache=cache
                )

    def prepare(self, params: UnlearningParams, body: Mapping[str, Any]) -> GateJob:
        """Cheap checks before admission (fail closed): 400 for text the gate cannot read or
        more than it reads, and for a threshold moved on a set whose trained gate decides at
        its own."""
        where = "messages" if "messages" in body else "prompt"
        gate = self.gates.get(params.forget_set)
        if isinstance(gate, TrainedGate) and params.threshold != self.policy(params).threshold:
            raise RequestRefused(
                "This forget set's gate is a trained classifier that decides at its own "
                "validated threshold; omit 'threshold'.",
                param="correction.unlearning.threshold",
            )
        try:
            texts = request_texts(body)
        except UngateableInput as exc:
            raise RequestRefused(str(exc), param=exc.param) from None
        size = sum(len(t) for t in texts)
        if size > self.max_chars:
            raise _too_long(f"{self.max_chars} characters of text; this one has {size}", where)
        pieces = chunks(texts)
        if len(pieces) > self.max_pieces:
            raise _too_long(
                f"{self.max_pieces} sentences and passages; this one has {len(pieces)}", where
            )
        return GateJob(params, tuple(pieces))

    async def admit(self, params: UnlearningParams, job: GateJob) -> Admitted:
        """The parameters to send to the engine, with the gate's fields filled in, and the
        set's refusal as the answer when the gate opens under ``refuse`` (call it once the
        request holds an admission slot)."""
        decision = await self._decide(params, job.pieces)
        label = FILTER if decision.opened else PASS
        policy = self.policy(params)
        self.metrics.unlearning_gate.labels(policy.label, label, decision.gate).inc()
        self.metrics.unlearning_gate_score.labels(policy.label, decision.gate).observe(
            decision.score
        )
        on_match = strictest(policy.on_match, params.on_match)
        gated = params.model_copy(update={"targets": decision.targets, "on_match": on_match})
        admission = Admission(params, decision, on_match)
        return Admitted(gated, admission, policy.refusal if admission.refused else None)

    async def more_targets(self, params: UnlearningParams, texts: Sequence[str]) -> tuple[int, ...]:
        """The entries ``texts`` retrieve under an admitted request's ``params``: text the
        request's generations add after admission (a refinement round's feedback can quote
        client text), gated as the request was. Fails closed like :meth:`prepare` (400 for more
        text than the gate reads)."""
        if not texts:
            return ()
        size = sum(len(t) for t in texts)
        if size > self.max_chars:
            raise _too_long(f"{self.max_chars} characters of text; a round has {size}", NAME)
        pieces = chunks(texts)
        if len(pieces) > self.max_pieces:
            raise _too_long(f"{self.max_pieces} sentences and passages in a round", NAME)
        decision = await self._decide(params, tuple(pieces))
        return decision.targets

    async def _decide(self, params: UnlearningParams, pieces: tuple[str, ...]) -> GateDecision:
        """The gate's decision on ``pieces``, embedded in a batch with concurrent requests'."""
        gate = self.gates[params.forget_set]
        batcher = self._batchers[id(gate.embedder)]
        return await batcher.run(
            pieces, functools.partial(gate.decide_embedded, threshold=params.threshold)
        )

    def _threshold(self, params: UnlearningParams) -> float:
        """The threshold the deciding gate compared its score with."""
        gate = self.gates[params.forget_set]
        return gate.threshold if isinstance(gate, TrainedGate) else params.threshold

    def policy(self, params: UnlearningParams) -> ForgetSetPolicy:
        return self.policies.get(params.forget_set) or ForgetSetPolicy()

    def report(self, admitted: Admitted, figures: Mapping[str, float] | None) -> dict[str, Any]:
        """The request's report, from the unlearning figures the engine recorded for it
        (decoding/unlearning/correction.py), once its generation is over (idempotent). Without the set's ``report_detail``: the decision only
        (the score, its threshold, the entries retrieved and the tokens blocked would each tell
        the client how near its text, or the model's output, is to the set's content)."""
        admission: Admission = admitted.state
        if admission.report is None:
            figures = figures or {}
            counts = {
                "steps": int(figures.get("steps", 0)),
                "tokens_blocked": int(figures.get("tokens_blocked", 0)),
                "tokens_penalized": int(figures.get("tokens_penalized", 0)),
            }
            self.metrics.tokens_blocked.inc(counts["tokens_blocked"])
            decision = admission.decision
            policy = self.policy(admission.params)
            # What the client sees anyway (the refusal, the phrase): reported without detail too.
            verdict = on_match_report(admission, int(figures.get("abstentions", 0)))
            self.metrics.unlearning_outcomes.labels(policy.label, verdict["outcome"]).inc()
            gate: dict[str, Any] = {"decision": FILTER if decision.opened else PASS}
            if not policy.report_detail:
                # steer's report stays what it was (the decision says it all)
                shown = verdict if admission.on_match != "steer" else {}
                admission.report = {"gate": gate, **shown}
            else:
                gate |= {
                    "by": decision.gate,
                    "score": round(decision.score, 4),
                    "threshold": self._threshold(admission.params),
                }
                admission.report = {
                    "forget_set": policy.label,
                    "gate": gate,
                    **verdict,
                    "entries_retrieved": len(decision.targets),
                    **counts,
                }
        return admission.report


def on_match_report(admission: Admission, abstentions: int) -> dict[str, Any]:
    """The policy in force and what it did: ``{"on_match", "outcome"}``, with the number of
    rows that abstained under ``abstain`` (decoding/unlearning/policy.py ``outcome``)."""
    report: dict[str, Any] = {
        "on_match": admission.on_match,
        "outcome": outcome(admission.decision.opened, admission.on_match, abstentions),
    }
    if admission.on_match != "steer":
        report["abstentions"] = abstentions
    return report


def _too_long(limit: str, where: str) -> RequestRefused:
    return RequestRefused(
        f"With correction.unlearning the gate reads a request of at most {limit}. It must read "
        "all of it: shorten the request.",
        param=where,
        code=TOO_LONG,
    )
