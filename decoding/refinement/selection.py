"""Which candidate a loop returns, and which of several a strategy keeps going with."""

from __future__ import annotations

from collections.abc import Sequence

from .run import Candidate


def select(candidates: Sequence[Candidate]) -> Candidate:
    """The highest score, then accepted, then the earliest: never below the draft's score."""
    return max(candidates, key=lambda c: (c.verdict.score, c.verdict.accepted, -c.index))
