"""``correction.refinement``: the validated parameters of a refinement loop.

::

    {"verifier": {"type": "answer", "reference": "42", "mode": "numeric"},
     "strategy": "try_again", "max_rounds": 3}

``max_rounds`` counts candidate answers, the draft included, and may not exceed the server's
cap (validation context :data:`MAX_ROUNDS_CONTEXT`). ``truth``, when given, is an exact
verifier used only to count flips (it never steers the loop).

The request's budget (decoding/refinement/budget.py): ``max_engine_calls``,
``max_sandbox_seconds`` and ``max_seconds`` may not exceed the server's maximums (validation
context :data:`BUDGET_CAPS_CONTEXT`); a request that leaves one out gets the maximum.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    FiniteFloat,
    ValidationInfo,
    field_validator,
    model_validator,
)

from ..params import CorrectionParams, NestedFieldError
from .specs import build_verifier, parse_verifier
from .steps import StepSplit
from .templates import check_template
from .verifier_types import verifier_types_in

#: The key of the request's ``correction`` object that asks for refinement.
REFINEMENT = "refinement"

#: Validation context key: the server's cap on ``max_rounds``.
MAX_ROUNDS_CONTEXT = "refinement_max_rounds"
#: Used when the server sets no cap.
DEFAULT_MAX_ROUNDS_CAP = 8
#: Validation context key: the server's :class:`BudgetCaps`.
BUDGET_CAPS_CONTEXT = "refinement_budget_caps"


@dataclass(frozen=True)
class BudgetCaps:
    """The server's maximums on a request's refinement budget (``[refinement]`` config)."""

    max_engine_calls: int = 64
    max_sandbox_seconds: float = 120.0
    max_seconds: float = 300.0


#: The budget fields of :class:`RefinementParams`, named as in :class:`BudgetCaps`.
_BUDGETS = ("max_seconds", "max_engine_calls", "max_sandbox_seconds")

#: The strategies that refine a candidate; ``aggregate`` may escalate to any of them (and to
#: nothing else, so escalation never recurses).
RefinerName = Literal["try_again", "self_refine", "best_of_n", "decompose", "localize"]
REFINERS: tuple[str, ...] = get_args(RefinerName)
#: The strategies a request may name (decoding/refinement/strategies.py lists them all).
StrategyName = Literal[RefinerName, "aggregate"]
STRATEGIES: tuple[str, ...] = get_args(StrategyName)

#: localize's default step verifier: P(True) asked of the steps so far (a prefix of the
#: answer, possibly unfinished) rather than of a finished answer.
STEP_P_TRUE_PROMPT = (
    "Question: {question}\n"
    "Proposed solution, possibly unfinished:\n{answer}\n"
    "Is every step of the proposed solution so far:\n"
    " (A) Correct\n"
    " (B) Incorrect\n"
    "The steps so far are:"
)
DEFAULT_STEP_VERIFIER: dict[str, Any] = {"type": "p_true", "prompt": STEP_P_TRUE_PROMPT}


class RefinementPrompts(BaseModel):
    """The strategies' prompts; ``{placeholders}`` are filled in by the loop."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: try_again (UFO): the next user turn after a rejected answer.
    try_again: str = "Incorrect. Please think again."
    #: self_refine: asks for a critique of the last answer.
    critique: str = (
        "Check your previous answer for mistakes. If it is fully correct, reply exactly "
        '"it is correct". Otherwise list the mistakes briefly.'
    )
    #: self_refine and decompose: asks for a rewrite given {feedback}.
    refine: str = (
        "Feedback on your previous answer:\n{feedback}\n\n"
        "Write an improved answer to the original request that fixes these problems. "
        "Reply with the answer only."
    )
    #: decompose: asks for the instruction's constraints, one per line.
    decompose: str = (
        "List the separate requirements in this instruction, one per line, nothing else.\n\n"
        "Instruction:\n{instruction}"
    )
    #: decompose: checks one {constraint} against the {response}.
    check: str = (
        "Requirement: {constraint}\n\nResponse:\n{response}\n\n"
        "Does the response meet the requirement? Answer yes or no."
    )

    #: localize: the local rewrite, kept after the correct {prefix} (the steps before the
    #: first failing one); {step} is that step, {number} its 1-based position.
    localize: str = (
        "Your answer above goes wrong at step {number}:\n{step}\n\n"
        "The steps before it are correct:\n{prefix}\n\n"
        "Write a corrected step {number} and the rest of the answer after those steps. "
        "Reply with only the new steps, without repeating the correct ones."
    )
    #: localize: the global rewrite, from scratch.
    restart: str = (
        "Your answer above is not correct. Solve the original request again from the "
        "beginning, differently. Reply with the answer only."
    )
    #: aggregate: appended to the request's last user turn when it escalates; {samples} are
    #: the sampled answers.
    samples: str = (
        "Earlier attempts at this request gave these answers, which do not agree:\n"
        "{samples}\n\nAnswer the request correctly."
    )

    @field_validator("refine")
    @classmethod
    def _refine(cls, value: str) -> str:
        return check_template(value, "feedback")

    @field_validator("localize")
    @classmethod
    def _localize(cls, value: str) -> str:
        return check_template(value, "prefix", "step", "number")

    @field_validator("samples")
    @classmethod
    def _samples(cls, value: str) -> str:
        return check_template(value, "samples")

    @field_validator("decompose")
    @classmethod
    def _decompose(cls, value: str) -> str:
        return check_template(value, "instruction")

    @field_validator("check")
    @classmethod
    def _check(cls, value: str) -> str:
        return check_template(value, "constraint", "response")

    @field_validator("try_again", "critique", "restart")
    @classmethod
    def _plain(cls, value: str) -> str:
        return check_template(value)


def _verifier_spec(value: Any, info: ValidationInfo) -> dict[str, Any]:
    return parse_verifier(value, info.context)


class RefinementParams(CorrectionParams):
    """Generate, verify, and while not accepted and budget remains, regenerate with feedback;
    then return the best-scoring candidate (ties go to the earliest, so never below the
    draft)."""

    verifier: dict[str, Any]
    strategy: StrategyName = "try_again"
    #: Candidate answers, the draft included (best_of_n: samples drawn).
    max_rounds: int = Field(3, ge=1)
    #: Budget on all completion tokens the loop spends (critiques and checks included).
    max_total_tokens: int | None = Field(None, gt=0)
    #: Budget on the loop's wall time, in seconds (default: the server's maximum).
    max_seconds: FiniteFloat | None = Field(None, gt=0)
    #: Budget on engine calls: generated sequences plus verifier forwards (p_true, a judge on
    #: this engine). Default: the server's maximum.
    max_engine_calls: int | None = Field(None, gt=0)
    #: Budget on wall seconds spent in sandboxed verifiers. Default: the server's maximum.
    max_sandbox_seconds: FiniteFloat | None = Field(None, gt=0)
    #: Sampling temperature for rounds after the draft (and best_of_n's samples); None: the
    #: request's own.
    temperature: FiniteFloat | None = Field(None, ge=0, le=2)
    #: Append the verifier's feedback to the strategy's own feedback turn.
    feedback: bool = False
    #: Exact verifier used only to count flips (defaults to ``verifier`` when that is exact).
    truth: dict[str, Any] | None = None
    #: decompose: at most this many constraints are checked.
    max_constraints: int = Field(6, ge=1, le=20)
    #: localize: the verifier that scores each prefix of steps (default: P(True) on the
    #: steps so far, :data:`STEP_P_TRUE_PROMPT`); the first prefix it rejects holds the first
    #: failing step.
    step_verifier: dict[str, Any] = Field(default_factory=lambda: dict(DEFAULT_STEP_VERIFIER))
    #: localize: how a candidate is cut into steps (decoding/refinement/steps.py).
    step_split: StepSplit = "lines"
    #: localize: at most this many steps (later ones join the last), so prefixes scored.
    max_steps: int = Field(8, ge=1, le=32)
    #: aggregate: samples drawn and voted on (the draft included); at most ``max_rounds``.
    samples: int = Field(3, ge=2, le=16)
    #: aggregate: accept the majority answer when its share of the votes is at least this.
    tau: FiniteFloat = Field(0.5, ge=0, le=1)
    #: aggregate: below ``tau``, the strategy that refines from the majority sample, with the
    #: samples in context, on the rounds left after the samples (None: return the majority).
    escalate: RefinerName | None = None
    #: Streaming: send every round's candidate as it is made (default: only the chosen one).
    stream_rounds: bool = False
    prompts: RefinementPrompts = RefinementPrompts()

    _verifier = field_validator("verifier", mode="before")(_verifier_spec)
    _step_verifier = field_validator("step_verifier", mode="before")(_verifier_spec)

    @field_validator("truth", mode="before")
    @classmethod
    def _truth(cls, value: Any, info: ValidationInfo) -> dict[str, Any] | None:
        if value is None:
            return None
        spec = parse_verifier(value, info.context)
        if not build_verifier(spec, verifier_types_in(info.context)).exact:
            raise NestedFieldError(
                "must be exact (regex, json_schema, answer, python_tests or their combinations)"
            )
        return spec

    @field_validator("max_rounds")
    @classmethod
    def _cap(cls, value: int, info: ValidationInfo) -> int:
        cap = (info.context or {}).get(MAX_ROUNDS_CONTEXT, DEFAULT_MAX_ROUNDS_CAP)
        if value > cap:
            raise ValueError(f"is {value}; this server allows at most {cap}")
        return value

    @field_validator(*_BUDGETS)
    @classmethod
    def _budget_cap(cls, value: float | None, info: ValidationInfo) -> float | None:
        cap = getattr(_caps(info), info.field_name)
        if value is not None and value > cap:
            raise ValueError(f"is {value:g}; this server allows at most {cap:g}")
        return value

    @model_validator(mode="after")
    def _samples_within_rounds(self) -> RefinementParams:
        if self.strategy != "aggregate":
            return self
        if self.samples > self.max_rounds:
            raise NestedFieldError(
                f"is {self.samples}; aggregate draws its samples within max_rounds "
                f"({self.max_rounds})",
                ("samples",),
            )
        if self.escalate is not None and self.samples == self.max_rounds:
            raise NestedFieldError(
                f"escalating to {self.escalate} needs rounds after the {self.samples} samples: "
                f"max_rounds must exceed samples",
                ("max_rounds",),
            )
        return self

    @model_validator(mode="before")
    @classmethod
    def _budget_defaults(cls, data: Any, info: ValidationInfo) -> Any:
        if not isinstance(data, dict):
            return data
        caps = _caps(info)
        defaults = {name: getattr(caps, name) for name in _BUDGETS if data.get(name) is None}
        return {**data, **defaults}


def _caps(info: ValidationInfo) -> BudgetCaps:
    return (info.context or {}).get(BUDGET_CAPS_CONTEXT) or BudgetCaps()
