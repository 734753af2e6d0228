"""``aggregate``: self-consistency (Wang et al. 2023) with MAgICoRe's routing (Chen et al.
2024, "MAgICoRe: Multi-Agent, Iterative, Coarse-to-Fine Refinement for Reasoning").

Draw ``k = samples`` answers: the draft (drawn exactly as a single-shot request would be) and
``k - 1`` samples at the loop's temperature; the verifier scores each, as in every strategy.
Vote on their final answers (decoding/refinement/votes.py). When ``agreement >= tau`` the
problem is easy: the answer is the first sample holding the majority answer
(``stop_reason`` ``agreement``), whatever the verifier scored. Otherwise it is hard: with
``escalate`` naming a refiner, that strategy continues from the majority sample, with every
sample quoted after the request's last user turn (``prompts.samples``), on the rounds left
after the samples, and the loop selects as usual (the samples compete too); without
``escalate`` the majority sample is returned (``stop_reason`` ``disagreement``). The
report's ``aggregate`` entry holds the vote.

A refiner never escalates, so escalation is one level deep.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence

from .generation import Message
from .rounds import Strategy
from .run import Candidate, RefinementRun
from .templates import fill
from .votes import final_answer, majority

#: Characters of each sample quoted when escalating (a bound on the added context).
SAMPLE_CHARS = 1000
#: Characters of each distinct answer in the report.
REPORT_ANSWER_CHARS = 200


def with_samples(messages: Sequence[Message], note: str) -> list[Message]:
    """``messages`` with ``note`` appended to the last user turn (as a text part when its
    content is a list of parts; as a new user turn when there is none)."""
    out = [dict(m) for m in messages]
    for message in reversed(out):
        if message.get("role") != "user":
            continue
        content = message.get("content")
        if isinstance(content, list):
            message["content"] = [*content, {"type": "text", "text": f"\n\n{note}"}]
        else:
            message["content"] = f"{content or ''}\n\n{note}"
        return out
    return [*out, {"role": "user", "content": note}]


def quote_samples(candidates: Sequence[Candidate]) -> str:
    return "\n\n".join(
        f"Attempt {i + 1}:\n{c.text.strip()[:SAMPLE_CHARS]}" for i, c in enumerate(candidates)
    )


class Aggregate(Strategy):
    name = "aggregate"

    def __init__(self, refiners: Mapping[str, Strategy]) -> None:
        #: The strategies ``escalate`` may name (never aggregate itself).
        self.refiners = refiners

    async def run(self, run: RefinementRun) -> None:
        params = run.params
        extra = params.samples - 1
        draft, more = await asyncio.gather(
            run.generate(run.messages),
            run.generate(run.messages, n=extra, temperature=params.temperature),
        )
        generations = [*(draft or [])[:1], *(more or [])]
        steps = ["draft" if draft else "sample"] + ["sample"] * (len(generations) - 1)
        samples = [await run.add(g, step) for g, step in zip(generations, steps, strict=True)]
        if not samples:
            return
        answers = [final_answer(c.text) for c in samples]
        vote = majority(answers)
        winner = samples[answers.index(vote.answer)]
        details = {
            "samples": len(samples),
            "answers": [[a[:REPORT_ANSWER_CHARS], n] for a, n in vote.counts],
            "majority": vote.answer[:REPORT_ANSWER_CHARS],
            "agreement": round(vote.agreement, 6),
            "tau": params.tau,
            "chosen_by_vote": winner.index,
            "escalated": None,
        }
        run.details[self.name] = details
        if vote.agreement >= params.tau:
            run.chosen = winner
            return run.stop("agreement")
        if params.escalate is None or run.stop_reason is not None:
            run.chosen = winner
            return run.stop("disagreement")
        details["escalated"] = params.escalate
        run.messages = with_samples(
            run.messages, fill(params.prompts.samples, samples=quote_samples(samples))
        )
        run.start = winner
        await self.refiners[params.escalate].run(run)
