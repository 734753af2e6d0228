"""Splitting a candidate answer into steps, for ``localize`` (GLoRe) to score step by step.

The rule (``step_split``):

- ``lines``: a step is a non-empty line; the line break that ends it belongs to it.
- ``sentences``: a step ends after ``.``, ``!`` or ``?`` (closing quotes and brackets
  included) followed by whitespace, or at a line break; the whitespace that follows belongs
  to it.

Leading whitespace belongs to the first step. Steps beyond ``max_steps`` join the last one, so
at most ``max_steps`` prefixes are ever scored. The steps concatenated are the text itself,
character for character: a prefix of steps is a prefix of the text, and a local rewrite that
keeps it keeps it verbatim.
"""

from __future__ import annotations

import re
from typing import Literal, get_args

#: How a candidate is cut into steps.
StepSplit = Literal["lines", "sentences"]
STEP_SPLITS: tuple[str, ...] = get_args(StepSplit)

#: Where a step ends (the match's end is the next step's start).
_ENDS: dict[str, re.Pattern[str]] = {
    "lines": re.compile(r"\n+"),
    "sentences": re.compile(r"[.!?][\"')\]]*\s+|\n+"),
}


def split_steps(text: str, split: StepSplit, max_steps: int) -> list[str]:
    """``text`` cut into at most ``max_steps`` steps whose concatenation is ``text``; steps
    holding only whitespace join the step before them (or after, at the start)."""
    if max_steps < 1:
        raise ValueError("max_steps must be at least 1")
    steps: list[str] = []
    start = 0
    for end in _ENDS[split].finditer(text):
        if end.end() >= len(text):
            break
        piece = text[start : end.end()]
        if piece.strip():
            steps.append(piece)
            start = end.end()
    steps.append(text[start:])
    if len(steps) > 1 and not steps[-1].strip():
        steps[-2:] = ["".join(steps[-2:])]
    if len(steps) > max_steps:
        steps[max_steps - 1 :] = ["".join(steps[max_steps - 1 :])]
    return steps
