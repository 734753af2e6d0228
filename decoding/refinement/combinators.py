"""``{"all": [...]}`` and ``{"any": [...]}``: verifiers combined.

``all`` accepts when every part accepts and scores the mean of the parts' scores (so a
candidate passing more parts ranks higher); ``any`` accepts when one part accepts and scores
the best part's score. Parts run concurrently.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from .verdict import Verdict
from .verifier import Verifier, VerifyContext


class AllOf:
    exact: bool

    def __init__(self, parts: Sequence[Verifier]) -> None:
        self.parts = list(parts)
        self.name = "all"
        self.exact = all(part.exact for part in self.parts)

    async def verify(self, candidate: str, ctx: VerifyContext) -> Verdict:
        verdicts = await asyncio.gather(*(p.verify(candidate, ctx) for p in self.parts))
        feedback = "\n".join(v.feedback for v in verdicts if not v.accepted and v.feedback)
        return Verdict(
            self.name,
            all(v.accepted for v in verdicts),
            sum(v.score for v in verdicts) / len(verdicts),
            feedback,
            parts=tuple(verdicts),
        )


class AnyOf:
    exact: bool

    def __init__(self, parts: Sequence[Verifier]) -> None:
        self.parts = list(parts)
        self.name = "any"
        self.exact = all(part.exact for part in self.parts)

    async def verify(self, candidate: str, ctx: VerifyContext) -> Verdict:
        verdicts = await asyncio.gather(*(p.verify(candidate, ctx) for p in self.parts))
        accepted = any(v.accepted for v in verdicts)
        feedback = "" if accepted else "\n".join(v.feedback for v in verdicts if v.feedback)
        return Verdict(
            self.name, accepted, max(v.score for v in verdicts), feedback, parts=tuple(verdicts)
        )
