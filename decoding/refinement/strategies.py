"""What to generate after a rejected answer: the strategies.

- ``try_again`` (UFO, arXiv 2507.14295): append the answer and the user turn "Incorrect.
  Please think again."; stop when the model repeats an earlier answer.
- ``self_refine`` (Madaan et al. 2023): the model critiques its answer, then rewrites it from
  the critique; stop when the critique says "it is correct". Only the latest answer and
  critique are in context (the reference accumulates the whole history).
- ``best_of_n``: the draft plus ``max_rounds - 1`` samples, all verified; the verifier reranks.
- ``decompose`` (DeCRIM, Ferraz et al. 2024): the model lists the instruction's constraints,
  checks the answer against each, and rewrites it from the failed ones.
- ``localize`` (GLoRe, Havrilla et al. 2024; decoding/refinement/localize.py): finds the first
  failing step and rewrites from it (local) and from scratch (global); the verifier reranks.
- ``aggregate`` (self-consistency; MAgICoRe, Chen et al. 2024; decoding/refinement/aggregate.py):
  majority vote over samples; below the agreement threshold, escalates to a refiner.

In every strategy the verifier decides acceptance; the model's own critique only shapes the
feedback (and may stop self_refine early, as in the reference).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping
from types import MappingProxyType

from .aggregate import Aggregate
from .generation import user_text
from .localize import Localize
from .params import StrategyName
from .rounds import (
    Strategy,
    after,
    answer_key,
    feedback_turn,
    rewrite,
    start_or_draft,
    turn_text,
)
from .run import RefinementRun


class TryAgain(Strategy):
    name = "try_again"

    async def run(self, run: RefinementRun) -> None:
        candidate = await start_or_draft(run)
        if candidate is None:
            return
        messages = list(run.messages)
        seen = {answer_key(candidate)}
        while not candidate.verdict.accepted:
            if run.rounds_left <= 0:
                return run.stop("max_rounds")
            turn = feedback_turn(run, run.prompts.try_again, candidate)
            # The whole exchange stays in context: only negative feedback enters it (UFO).
            messages += [
                {"role": "assistant", "content": turn_text(candidate)},
                {"role": "user", "content": turn},
            ]
            generations = await run.generate(messages, temperature=run.params.temperature)
            if generations is None:
                return
            candidate = await run.add(generations[0], "retry")
            key = answer_key(candidate)
            if key in seen and not candidate.verdict.accepted:
                return run.stop("repeated_answer")
            seen.add(key)
        run.stop("accepted")


IT_IS_CORRECT = "it is correct"


class SelfRefine(Strategy):
    name = "self_refine"

    async def run(self, run: RefinementRun) -> None:
        candidate = await start_or_draft(run)
        while candidate is not None and not candidate.verdict.accepted:
            if run.rounds_left <= 0:
                return run.stop("max_rounds")
            critique = await run.generate(
                after(run, candidate, run.prompts.critique), temperature=run.params.temperature
            )
            if critique is None:
                return
            if IT_IS_CORRECT in critique[0].text.lower():
                return run.stop("critic_satisfied")
            feedback = feedback_turn(run, critique[0].text.strip(), candidate)
            candidate = await rewrite(run, candidate, feedback)
        if candidate is not None:
            run.stop("accepted")


class BestOfN(Strategy):
    name = "best_of_n"

    async def run(self, run: RefinementRun) -> None:
        start = run.take_start()
        # The draft is drawn exactly as a single-shot request would be (or handed over by
        # aggregate); the other rounds are samples.
        samples = run.rounds_left - (1 if start is None else 0)
        draft, extra = await asyncio.gather(
            run.generate(run.messages) if start is None else _nothing(),
            run.generate(run.messages, n=samples, temperature=run.params.temperature)
            if samples
            else _nothing(),
        )
        generations = [*(draft or [])[:1], *(extra or [])]
        steps = ["draft" if draft else "sample"] + ["sample"] * (len(generations) - 1)
        for generation, step in zip(generations, steps, strict=True):
            await run.add(generation, step)
        if any(c.verdict.accepted for c in run.candidates):
            run.stop("accepted")
        elif run.candidates:
            run.stop("max_rounds")


async def _nothing() -> list:
    return []


_LIST_MARK = re.compile(r"^\s*(?:[-*\u2022]|\d+[.)]|\(\d+\))\s*")


def parse_constraints(text: str, limit: int) -> list[str]:
    """One constraint per non-empty line, list marks removed, duplicates dropped."""
    out: list[str] = []
    for line in text.splitlines():
        item = _LIST_MARK.sub("", line).strip()
        if item and item.lower() not in (c.lower() for c in out):
            out.append(item)
    return out[:limit]


class Decompose(Strategy):
    name = "decompose"

    async def run(self, run: RefinementRun) -> None:
        candidate = await start_or_draft(run)
        constraints: list[str] | None = None
        while candidate is not None and not candidate.verdict.accepted:
            if run.rounds_left <= 0:
                return run.stop("max_rounds")
            if constraints is None:
                listed = await run.generate(
                    [
                        {
                            "role": "user",
                            # The request's own instruction (run.messages may carry
                            # aggregate's samples after it).
                            "content": run.prompts.decompose.format(
                                instruction=user_text(run.ctx.messages)
                            ),
                        }
                    ],
                    temperature=0.0,
                )
                if listed is None:
                    return
                constraints = parse_constraints(listed[0].text, run.params.max_constraints)
            failed = await self._critique(run, constraints, turn_text(candidate))
            if failed is None:
                return
            own = "\n".join(f"- {c}" for c in failed) or "The answer does not meet the request."
            feedback = feedback_turn(run, own, candidate)
            candidate = await rewrite(run, candidate, feedback)
        if candidate is not None:
            run.stop("accepted")

    async def _critique(
        self, run: RefinementRun, constraints: list[str], response: str
    ) -> list[str] | None:
        """The constraints the critic (the same model) says the response fails."""
        replies = await asyncio.gather(
            *(
                run.generate(
                    [
                        {
                            "role": "user",
                            "content": run.prompts.check.format(constraint=c, response=response),
                        }
                    ],
                    max_tokens=4,
                    temperature=0.0,
                )
                for c in constraints
            )
        )
        if any(reply is None for reply in replies):
            return None
        return [
            c
            for c, reply in zip(constraints, replies, strict=True)
            if not reply[0].text.strip().lower().startswith("yes")
        ]


#: The strategies that refine a candidate (``params.REFINERS``: the same names).
REFINERS_BY_NAME: Mapping[str, Strategy] = MappingProxyType(
    {s.name: s for s in (TryAgain(), SelfRefine(), BestOfN(), Decompose(), Localize())}
)
#: Every strategy, by the name a request gives (``params.STRATEGIES``: the same names).
STRATEGIES_BY_NAME: Mapping[str, Strategy] = MappingProxyType(
    {**REFINERS_BY_NAME, "aggregate": Aggregate(REFINERS_BY_NAME)}
)


def strategy_for(name: StrategyName) -> Strategy:
    return STRATEGIES_BY_NAME[name]
