"""``localize``: GLoRe (Havrilla et al. 2024, "GLoRe: When, Where, and How to Improve LLM
Reasoning via Global and Local Refinements").

While the current answer is rejected and rounds are left:

1. *Where*: cut the answer into steps (decoding/refinement/steps.py) and score the prefixes
   ``s_1``, ``s_1 s_2``, ... with the step verifier (``step_verifier``; P(True) on the steps so
   far by default), in order, up to the first one it rejects: that prefix's last step is the
   first failing step ``i``. When every prefix passes, the last step is taken as failing (the
   verifier rejected the whole answer).
2. *How*, both from the same answer (generated together):

   - local: the model is shown its answer and told that step ``i`` fails and the steps before
     it are correct; the candidate is the kept prefix ``s_1 ... s_{i-1}``, verbatim, followed
     by its reply (the rewritten step ``i`` and the rest);
   - global: the model is told the answer is wrong and solves the request again.

3. *Rerank*: the verifier scores the local and global rewrites like every candidate; the best
   of the current answer, local and global (:func:`~decoding.refinement.loop.select`: score,
   then accepted, then the earliest) becomes the current answer. The report's ``localize``
   entry says, per round, the first failing step, the prefix scores and which of the three won
   (``draft``, or ``previous`` for the answer a later round started from; ``local``;
   ``global``).

Each round adds two candidates (one when a single round is left, which goes to the local
rewrite), so ``max_rounds = 3`` is GLoRe's one round: draft, local, global.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, replace
from typing import Any

from .generation import Generation
from .rounds import Strategy, after, feedback_turn, start_or_draft
from .run import Candidate, RefinementRun
from .selection import select
from .steps import split_steps
from .templates import fill
from .verifier import Verifier


@dataclass(frozen=True)
class Failure:
    """Where a candidate first fails: step ``index`` (0-based) of ``steps``."""

    steps: tuple[str, ...]
    index: int
    #: The step verifier's score of each prefix it scored, in order.
    scores: tuple[float, ...]

    @property
    def prefix(self) -> str:
        """The steps before the failing one, verbatim."""
        return "".join(self.steps[: self.index])


async def first_failing_step(
    run: RefinementRun, text: str, step_verifier: Verifier
) -> Failure | None:
    """Score the prefixes of ``text``'s steps in order up to the first rejected one (None when
    a budget ran out first)."""
    steps = tuple(split_steps(text, run.params.step_split, run.params.max_steps))
    scores: list[float] = []
    for i in range(len(steps)):
        verdict = await run.verify_in_budget("".join(steps[: i + 1]), step_verifier)
        if run.stop_reason is not None:
            return None
        scores.append(verdict.score)
        if not verdict.accepted:
            return Failure(steps, i, tuple(scores))
    return Failure(steps, len(steps) - 1, tuple(scores))


def local_turn(run: RefinementRun, failure: Failure, candidate: Candidate) -> str:
    """The user turn that asks for the rewrite from the failing step on."""
    turn = fill(
        run.prompts.localize,
        prefix=failure.prefix.strip() or "(none: the first step fails)",
        step=failure.steps[failure.index].strip(),
        number=str(failure.index + 1),
    )
    return feedback_turn(run, turn, candidate)


def kept(prefix: str, continuation: Generation) -> Generation:
    """The local candidate: the kept ``prefix``, then the model's continuation (its tokens
    are the continuation's: the prefix was not generated again)."""
    return replace(continuation, text=prefix + continuation.text.lstrip())


class Localize(Strategy):
    name = "localize"

    async def run(self, run: RefinementRun) -> None:
        step_verifier = run.build(run.params.step_verifier)
        rounds: list[dict[str, Any]] = []
        run.details[self.name] = {"rounds": rounds}
        current = await start_or_draft(run)
        while current is not None and not current.verdict.accepted:
            if run.rounds_left <= 0:
                return run.stop("max_rounds")
            failure = await first_failing_step(run, current.text, step_verifier)
            if failure is None:
                return
            both = run.rounds_left >= 2
            local, restart = await asyncio.gather(
                run.generate(
                    after(run, current, local_turn(run, failure, current)),
                    temperature=run.params.temperature,
                ),
                run.generate(
                    after(run, current, feedback_turn(run, run.prompts.restart, current)),
                    temperature=run.params.temperature,
                )
                if both
                else _nothing(),
            )
            # The answer the round started from: the draft, or the previous round's winner.
            contenders = {"draft" if current.index == 0 else "previous": current}
            if local:
                contenders["local"] = await run.add(kept(failure.prefix, local[0]), "local")
            if restart:
                contenders["global"] = await run.add(restart[0], "global")
            winner = select(list(contenders.values()))
            rounds.append(
                {
                    "from": current.index,
                    "steps": len(failure.steps),
                    "first_failing_step": failure.index + 1,
                    "step_scores": [round(s, 6) for s in failure.scores],
                    "winner": next(k for k, c in contenders.items() if c is winner),
                }
            )
            if local is None or (both and restart is None):
                return  # a budget ran out (the run says which)
            current = winner
        if current is not None:
            run.stop("accepted")


async def _nothing() -> None:
    return None
