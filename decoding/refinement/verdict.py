"""A verifier's judgement of one candidate answer."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Verdict:
    """``accepted`` decides whether the loop stops; ``score`` in [0, 1] ranks candidates
    (selection never returns one scoring below the draft); ``feedback`` says what failed, in
    words a model can act on."""

    verifier: str
    accepted: bool
    score: float
    feedback: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    #: Verdicts of the parts of an ``all``/``any`` combination.
    parts: tuple[Verdict, ...] = ()

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "verifier": self.verifier,
            "accepted": self.accepted,
            "score": round(self.score, 6),
        }
        if self.feedback:
            out["feedback"] = self.feedback
        if self.details:
            out["details"] = self.details
        if self.parts:
            out["parts"] = [part.to_json() for part in self.parts]
        return out

    def leaves(self) -> list[Verdict]:
        """The verdicts of the individual verifiers (this one when it is not a combination)."""
        if not self.parts:
            return [self]
        return [leaf for part in self.parts for leaf in part.leaves()]


def passed(verifier: str, score: float = 1.0, **details: Any) -> Verdict:
    return Verdict(verifier, True, score, details=details)


def failed(verifier: str, feedback: str, score: float = 0.0, **details: Any) -> Verdict:
    return Verdict(verifier, False, score, feedback, details=details)
