"""What to generate after a rejected answer: the four strategies.

- ``try_again`` (UFO, arXiv 2507.14295): append the answer and the user turn "Incorrect.
  Please think again."; stop when the model repeats an earlier answer.
- ``self_refine`` (Madaan et al. 2023): the model critiques its answer, then rewrites it from
  the critique; stop when the critique says "it is correct". Only the latest answer and
  critique are in context (the reference accumulates the whole history).
- ``best_of_n``: the draft plus ``max_rounds - 1`` samples, all verified; the verifier reranks.
- ``decompose`` (DeCRIM, Ferraz et al. 2024): the model lists the instruction's constraints,
  checks the answer against each, and rewrites it from the failed ones.

In every strategy the verifier decides acceptance; the model's own critique only shapes the
feedback (and may stop self_refine early, as in the reference).
"""

from __future__ import annotations

import asyncio
import re
from abc import ABC, abstractmethod
from collections.abc import Mapping
from types import MappingProxyType
from typing import ClassVar

from .generation import Message, user_text
from .params import StrategyName
from .run import Candidate, RefinementRun
from .text_verifiers import normalise


class Strategy(ABC):
    name: ClassVar[StrategyName]

    @abstractmethod
    async def run(self, run: RefinementRun) -> None:
        """Produce candidates through ``run`` until accepted, stopped or out of budget."""


async def _draft(run: RefinementRun) -> Candidate | None:
    generations = await run.generate(run.messages)
    return await run.add(generations[0], "draft") if generations else None


def _feedback(run: RefinementRun, own: str, candidate: Candidate) -> str:
    if run.params.feedback and candidate.verdict.feedback:
        return f"{own}\n{candidate.verdict.feedback}"
    return own


async def _rewrite(run: RefinementRun, candidate: Candidate, feedback: str) -> Candidate | None:
    """The candidate rewritten from ``feedback`` (the refine prompt), or None when the budget
    ran out."""
    rewrite = await run.generate(
        _after(run, candidate, run.prompts.refine.format(feedback=feedback)),
        temperature=run.params.temperature,
    )
    return None if rewrite is None else await run.add(rewrite[0], "refine")


def _answer_key(candidate: Candidate) -> str:
    """What counts as "the same answer": the extracted answer when the verifier gives one."""
    for leaf in candidate.verdict.leaves():
        if "answer" in leaf.details:
            return normalise(str(leaf.details["answer"]))
    return normalise(candidate.text)


def _after(run: RefinementRun, candidate: Candidate, turn: str) -> list[Message]:
    return [
        *run.messages,
        {"role": "assistant", "content": candidate.text},
        {"role": "user", "content": turn},
    ]


class TryAgain(Strategy):
    name = "try_again"

    async def run(self, run: RefinementRun) -> None:
        candidate = await _draft(run)
        if candidate is None:
            return
        messages = list(run.messages)
        seen = {_answer_key(candidate)}
        while not candidate.verdict.accepted:
            if run.rounds_left <= 0:
                return run.stop("max_rounds")
            turn = _feedback(run, run.prompts.try_again, candidate)
            # The whole exchange stays in context: only negative feedback enters it (UFO).
            messages += [
                {"role": "assistant", "content": candidate.text},
                {"role": "user", "content": turn},
            ]
            generations = await run.generate(messages, temperature=run.params.temperature)
            if generations is None:
                return
            candidate = await run.add(generations[0], "retry")
            key = _answer_key(candidate)
            if key in seen and not candidate.verdict.accepted:
                return run.stop("repeated_answer")
            seen.add(key)
        run.stop("accepted")


IT_IS_CORRECT = "it is correct"


class SelfRefine(Strategy):
    name = "self_refine"

    async def run(self, run: RefinementRun) -> None:
        candidate = await _draft(run)
        while candidate is not None and not candidate.verdict.accepted:
            if run.rounds_left <= 0:
                return run.stop("max_rounds")
            critique = await run.generate(
                _after(run, candidate, run.prompts.critique), temperature=run.params.temperature
            )
            if critique is None:
                return
            if IT_IS_CORRECT in critique[0].text.lower():
                return run.stop("critic_satisfied")
            feedback = _feedback(run, critique[0].text.strip(), candidate)
            candidate = await _rewrite(run, candidate, feedback)
        if candidate is not None:
            run.stop("accepted")


class BestOfN(Strategy):
    name = "best_of_n"

    async def run(self, run: RefinementRun) -> None:
        samples = run.params.max_rounds - 1
        # The draft is drawn exactly as a single-shot request would be; the rest are samples.
        draft, extra = await asyncio.gather(
            run.generate(run.messages),
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
        candidate = await _draft(run)
        constraints: list[str] | None = None
        while candidate is not None and not candidate.verdict.accepted:
            if run.rounds_left <= 0:
                return run.stop("max_rounds")
            if constraints is None:
                listed = await run.generate(
                    [
                        {
                            "role": "user",
                            "content": run.prompts.decompose.format(
                                instruction=user_text(run.messages)
                            ),
                        }
                    ],
                    temperature=0.0,
                )
                if listed is None:
                    return
                constraints = parse_constraints(listed[0].text, run.params.max_constraints)
            failed = await self._critique(run, constraints, candidate.text)
            if failed is None:
                return
            own = "\n".join(f"- {c}" for c in failed) or "The answer does not meet the request."
            feedback = _feedback(run, own, candidate)
            candidate = await _rewrite(run, candidate, feedback)
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


#: Every strategy, by the name a request gives (``params.STRATEGIES``: the same names).
STRATEGIES_BY_NAME: Mapping[str, Strategy] = MappingProxyType(
    {s.name: s for s in (TryAgain(), SelfRefine(), BestOfN(), Decompose())}
)


def strategy_for(name: StrategyName) -> Strategy:
    return STRATEGIES_BY_NAME[name]
