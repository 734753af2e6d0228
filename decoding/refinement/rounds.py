"""What every strategy shares: the :class:`Strategy` base and the turns strategies build.

A strategy drives a :class:`~decoding.refinement.run.RefinementRun`: it generates through
``run.generate`` and records candidates through ``run.add`` (which verifies them). Its first
candidate is the draft, or the candidate another strategy handed over (``run.start``:
aggregate escalating).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

from .generation import Message
from .params import StrategyName
from .run import Candidate, RefinementRun
from .text_verifiers import normalise


class Strategy(ABC):
    name: ClassVar[StrategyName]

    @abstractmethod
    async def run(self, run: RefinementRun) -> None:
        """Produce candidates through ``run`` until accepted, stopped or out of budget."""


async def start_or_draft(run: RefinementRun) -> Candidate | None:
    """The candidate handed over to start from, else a fresh draft (None: out of budget)."""
    start = run.take_start()
    if start is not None:
        return start
    generations = await run.generate(run.messages)
    return await run.add(generations[0], "draft") if generations else None


def feedback_turn(run: RefinementRun, own: str, candidate: Candidate) -> str:
    """The strategy's ``own`` feedback, with the verifier's when the request asks for it."""
    if run.params.feedback and candidate.verdict.feedback:
        return f"{own}\n{candidate.verdict.feedback}"
    return own


async def rewrite(run: RefinementRun, candidate: Candidate, feedback: str) -> Candidate | None:
    """The candidate rewritten from ``feedback`` (the refine prompt), or None when the budget
    ran out."""
    generations = await run.generate(
        after(run, candidate, run.prompts.refine.format(feedback=feedback)),
        temperature=run.params.temperature,
    )
    return None if generations is None else await run.add(generations[0], "refine")


def answer_key(candidate: Candidate) -> str:
    """What counts as "the same answer": the extracted answer when the verifier gives one."""
    for leaf in candidate.verdict.leaves():
        if "answer" in leaf.details:
            return normalise(str(leaf.details["answer"]))
    return normalise(turn_text(candidate))


def after(run: RefinementRun, candidate: Candidate, turn: str) -> list[Message]:
    """The request's conversation, the candidate as the assistant's turn, then ``turn``."""
    return [
        *run.messages,
        {"role": "assistant", "content": turn_text(candidate)},
        {"role": "user", "content": turn},
    ]


def turn_text(candidate: Candidate) -> str:
    """The candidate as text: its content, then one line per tool call it made. The calls are
    written out rather than sent as ``tool_calls``: a call whose arguments are not JSON (what a
    verifier may have rejected) is no valid message, and every chat template renders text."""
    calls = [f"Tool call: {c.name}({c.arguments})" for c in candidate.tool_calls]
    return "\n".join([part for part in (candidate.text, *calls) if part])
