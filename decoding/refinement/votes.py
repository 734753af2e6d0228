"""Majority vote over sampled answers, for ``aggregate`` (self-consistency, Wang et al. 2023;
MAgICoRe, Chen et al. 2024).

A sample's final answer (:func:`final_answer`) is its last number, written canonically
(``1,000.50`` and ``1000.5`` are both ``1000.5``), when the text holds a number; otherwise its
last non-empty line, lower-cased, whitespace collapsed, surrounding punctuation and spaces
stripped. The vote (:func:`majority`) counts equal final answers; the majority is the most
frequent, ties going to the answer seen first, and ``agreement = count(majority) / k``.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")
_PUNCTUATION = " \t.,;:!?\"'`*()[]{}"


def final_answer(text: str) -> str:
    """The normalised final answer of ``text`` (see the module docstring); "" when empty."""
    numbers = _NUMBER.findall(text)
    if numbers:
        try:
            value = Decimal(numbers[-1].replace(",", ""))
        except InvalidOperation:  # e.g. "1,,": fall through to the line rule
            pass
        else:
            # Canonical: no exponent, no trailing zeros, "-0" is "0".
            canonical = format(value.normalize(), "f")
            return "0" if canonical in ("-0", "0") else canonical
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        return ""
    return " ".join(lines[-1].lower().split()).strip(_PUNCTUATION)


@dataclass(frozen=True)
class Vote:
    """The outcome of a majority vote over ``k`` answers."""

    #: The majority answer.
    answer: str
    #: ``count(answer) / k``, in (0, 1].
    agreement: float
    #: Every distinct answer with its count, most frequent first (ties: first seen first).
    counts: tuple[tuple[str, int], ...]


def majority(answers: Sequence[str]) -> Vote:
    """The majority vote over ``answers`` (at least one)."""
    if not answers:
        raise ValueError("a vote needs at least one answer")
    counts = Counter(answers)
    first = {answer: i for i, answer in reversed(list(enumerate(answers)))}
    ranked = sorted(counts.items(), key=lambda item: (-item[1], first[item[0]]))
    answer, count = ranked[0]
    return Vote(answer, count / len(answers), tuple(ranked))
