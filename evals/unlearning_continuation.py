"""The continuation check's rows in ``corrigo eval unlearning``: its meaning part off (what
corrigo had before it, the text-level part staying on) against it on at each ban threshold
``check_threshold`` of :data:`THRESHOLDS`, on the same prompts, with the threshold chosen on a
validation half of the facts by :func:`choose` and reported on the other half.

The rule is fixed here, before any run: among the thresholds whose validation retain accuracy is
at most :data:`RETAIN_TOLERANCE` below the check-off setting's, the one with the lowest
validation fact leak (markers or misspelling); on a tie, the higher threshold (the check
intervenes less). The rates themselves are computed by evals/unlearning.py, which owns the facts
and the markers; this module holds the settings, the split, the rule and the table.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

from decoding.unlearning.continuation import DEFAULT_TAU

#: The ban thresholds compared (the shipped default among them).
THRESHOLDS: tuple[float, ...] = (0.6, 0.7, 0.8, 0.9)
#: The setting with the meaning part off.
OFF = "off"
#: How far below the check-off setting's validation retain accuracy a threshold may fall.
RETAIN_TOLERANCE = 0.05
RULE = (
    "known facts at even positions (with their probes) and retain facts at even positions are "
    "the validation half, odd positions the test half; the threshold is the one with the lowest "
    "validation fact leak (markers or misspelling) among those whose validation retain accuracy "
    f"is at most {RETAIN_TOLERANCE:.2f} below the check-off setting's, the higher on a tie"
)

#: The shipped default's setting name.
DEFAULT = f"{DEFAULT_TAU:g}"

T = TypeVar("T")


def label(threshold: float) -> str:
    """A threshold's setting name (``"0.8"``)."""
    return f"{threshold:g}"


def settings() -> dict[str, dict]:
    """Each setting's ``correction.unlearning`` fields, added to the eval's own."""
    return {
        OFF: {"continuation": False},
        **{label(t): {"continuation": True, "check_threshold": t} for t in THRESHOLDS},
    }


def halves(items: Sequence[T]) -> tuple[list[T], list[T]]:
    """``(validation, test)``: the items at even positions, then those at odd positions."""
    return list(items[0::2]), list(items[1::2])


def choose(validation: dict[str, dict]) -> str | None:
    """The chosen threshold's setting name under the rule of this module, or None when no
    threshold keeps retain accuracy within the tolerance.

    ``validation[name]`` holds ``leak`` and ``retain_accuracy``, each ``{"rate": ...}``, for
    :data:`OFF` and each threshold's :func:`label`.
    """
    floor = validation[OFF]["retain_accuracy"]["rate"] - RETAIN_TOLERANCE
    eligible = [
        t for t in THRESHOLDS if validation[label(t)]["retain_accuracy"]["rate"] >= floor - 1e-12
    ]
    if not eligible:
        return None
    best = min(eligible, key=lambda t: (validation[label(t)]["leak"]["rate"], -t))
    return label(best)


def cell(c: dict) -> str:
    return f"{100 * c['rate']:.1f}% [{100 * c['low']:.0f}, {100 * c['high']:.0f}]"


def table(section: dict) -> str:
    """Every setting's validation and test rates, the chosen and the default marked."""
    n = section["split"]
    lines = [
        f"| setting | validation: fact leak ({n['validation_facts']}) | validation: retain "
        f"accuracy ({n['validation_retain_questions']}) | test: fact leak, markers "
        f"({n['test_facts']}) | test: fact leak, markers or misspelling | test: probe leak, "
        f"markers or misspelling ({n['test_probes']}) | test: retain accuracy "
        f"({n['test_retain_questions']}) | near-topic accuracy ({n['near_topic_questions']}) |",
        "|---|" + "---:|" * 7,
    ]
    for name, row in section["rows"].items():
        marks = [
            *(["chosen"] if name == section["chosen"] else []),
            *(["default"] if name == section["default"] else []),
        ]
        shown = "meaning part off" if name == OFF else f"check_threshold {name}"
        if marks:
            shown += f" ({', '.join(marks)})"
        v, t = row["validation"], row["test"]
        lines.append(
            f"| {shown} | {cell(v['leak'])} | {cell(v['retain_accuracy'])} | "
            f"{cell(t['leak_facts'])} | {cell(t['leak'])} | {cell(t['leak_probes'])} | "
            f"{cell(t['retain_accuracy'])} | {cell(row['near_topic_accuracy'])} |"
        )
    return "\n".join(lines)
