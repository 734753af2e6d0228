"""The refinement loop: generate, verify, and while not accepted and budget remains,
regenerate with feedback; then select.

:func:`refine` starts a :class:`~decoding.refinement.run.RefinementRun` (the request's budgets
and candidates), lets the request's strategy (strategies.py) decide what to generate, and
selects: the candidate with the highest score, ties going to the earliest, so the answer never
scores below the draft. The one exception is ``aggregate`` when it does not escalate: it
returns its majority answer (self-consistency), whatever the verifier scored.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from .generation import GenerateFn, Message
from .params import RefinementParams
from .run import Candidate, RefinementRun
from .selection import select
from .specs import build_verifier
from .strategies import strategy_for
from .verifier import VerifierTypes, VerifyContext
from .verifier_types import BUILTIN_VERIFIER_TYPES

#: How the chosen answer's correctness differs from the draft's.
Flip = Literal["incorrect_to_correct", "correct_to_incorrect"]
FLIPS: tuple[str, ...] = get_args(Flip)


@dataclass(frozen=True)
class Truth:
    """Ground truth for the draft and the chosen answer, when an exact verifier knows it."""

    draft: bool
    chosen: bool

    @property
    def flip(self) -> Flip | None:
        if self.draft != self.chosen:
            return "incorrect_to_correct" if self.chosen else "correct_to_incorrect"
        return None


@dataclass(frozen=True)
class Outcome:
    strategy: str
    candidates: tuple[Candidate, ...]
    chosen: Candidate
    stop_reason: str
    tokens: int
    seconds: float
    truth: Truth | None
    #: What strategies report beyond the candidates (localize's steps, aggregate's vote), by
    #: strategy name; each becomes a key of the report.
    details: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def report(self) -> dict[str, Any]:
        """The ``refinement`` part of the response's ``correction`` report."""
        out: dict[str, Any] = {
            "strategy": self.strategy,
            "rounds": len(self.candidates),
            "stop_reason": self.stop_reason,
            "chosen": self.chosen.index,
            "accepted": self.chosen.verdict.accepted,
            "tokens": self.tokens,
            "seconds": round(self.seconds, 3),
            "candidates": [c.to_json() for c in self.candidates],
        }
        out.update({name: dict(detail) for name, detail in self.details.items()})
        if self.truth is not None:
            out["truth"] = {
                "draft": self.truth.draft,
                "chosen": self.truth.chosen,
                "flip": self.truth.flip,
            }
        return out


class NoCandidate(RuntimeError):
    """Not even the draft was generated: a budget ran out, or the engine refused (``cause``)."""

    def __init__(self, message: str, cause: BaseException | None = None) -> None:
        super().__init__(message)
        self.cause = cause


async def refine(
    params: RefinementParams,
    messages: Sequence[Message],
    generate: GenerateFn,
    ctx: VerifyContext | None = None,
    *,
    on_candidate: Callable[[Candidate], Awaitable[None]] | None = None,
    clock: Callable[[], float] = time.monotonic,
    verifier_types: VerifierTypes = BUILTIN_VERIFIER_TYPES,
    sequence_tokens: int | None = None,
) -> Outcome:
    """Run the request's strategy and select its answer. ``verifier_types``: the registry the
    request's specs were validated against (the server's); ``sequence_tokens``: the most
    completion tokens ``generate`` lets one sequence take (the request's ``max_tokens``)."""
    ctx = ctx or VerifyContext(messages)
    verifier = build_verifier(params.verifier, verifier_types)
    run = RefinementRun(
        params,
        messages,
        generate,
        verifier,
        ctx,
        on_candidate=on_candidate,
        clock=clock,
        verifier_types=verifier_types,
        sequence_tokens=sequence_tokens,
    )
    await strategy_for(params.strategy).run(run)
    if not run.candidates:
        if run.refusal is not None:
            raise NoCandidate(str(run.refusal), run.refusal.cause)
        raise NoCandidate("the refinement budget ran out before the first answer was generated")
    run.stop("accepted" if run.candidates[-1].verdict.accepted else "max_rounds")
    chosen = run.chosen or select(run.candidates)
    truth = await _truth(run, chosen, verifier_types)
    return Outcome(
        params.strategy,
        tuple(run.candidates),
        chosen,
        run.stop_reason or "max_rounds",
        run.tokens,
        clock() - run.started,
        truth,
        run.details,
    )


async def _truth(run: RefinementRun, chosen: Candidate, types: VerifierTypes) -> Truth | None:
    draft = run.candidates[0]
    if run.params.truth is None:
        if not run.verifier.exact:
            return None
        return Truth(draft.verdict.accepted, chosen.verdict.accepted)
    judge = build_verifier(run.params.truth, types)
    draft_ok = (await run.verify_in_budget(draft.answer, judge)).accepted
    chosen_ok = (
        draft_ok if chosen is draft else (await run.verify_in_budget(chosen.answer, judge)).accepted
    )
    return Truth(draft_ok, chosen_ok)


__all__ = ["FLIPS", "Flip", "NoCandidate", "Outcome", "Truth", "refine", "select"]
