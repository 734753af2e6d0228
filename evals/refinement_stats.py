"""The refinement eval's arithmetic: flips, pass rates with 95% intervals, paired differences
and token budgets. Pure functions over the eval's per-item rows (no engine).

A row is one request: ``suite``, ``config``, ``seed``, ``id``, ``draft`` and ``chosen`` (truth
of the first draft and of the final answer, from the exact checker run after the loop),
``loop_tokens`` (completion tokens the loop spent on candidates, critiques and checks) and
``completion_tokens`` (the response's usage: the loop's plus a judge verifier's).

Intervals. For a cell (suite, config) with items ``i = 1..n`` and seeds ``s = 1..S``, the item
score is ``x_i = mean_s correct(i, s)``; the pass rate is ``m = mean_i x_i`` and its 95%
interval ``m +- 1.96 * sd(x) / sqrt(n)`` (``sd`` with ``n - 1``; the normal approximation over
items, which are the main source of variance), clipped to [0, 1]. The difference to a baseline
is paired by item: ``d_i = x_i - x_i(baseline)``, ``mean(d) +- 1.96 * sd(d) / sqrt(n)``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

from decoding.refinement.loop import FLIPS, Flip, Truth

#: The normal quantile of a two-sided 95% interval.
Z95 = 1.959963984540054


def flip(draft: bool, chosen: bool) -> Flip | None:
    """The flip from the first draft to the final answer, or None when their truth is equal
    (the loop's own rule, decoding/refinement/loop.py)."""
    return Truth(draft, chosen).flip


def count_flips(rows: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """Flips of each kind over ``rows`` (each with ``draft`` and ``chosen``)."""
    counts = dict.fromkeys(FLIPS, 0)
    for row in rows:
        kind = flip(bool(row["draft"]), bool(row["chosen"]))
        if kind is not None:
            counts[kind] += 1
    return counts


@dataclass(frozen=True)
class Interval:
    """A mean and its 95% interval ``[low, high]``."""

    mean: float
    low: float
    high: float

    def to_json(self) -> dict[str, float]:
        return {"mean": self.mean, "low": self.low, "high": self.high}


def mean_interval(
    values: Sequence[float], *, clip: tuple[float, float] | None = (0.0, 1.0)
) -> Interval:
    """``mean +- Z95 * sd / sqrt(n)`` (``sd`` with ``n - 1``; zero width when ``n == 1``),
    clipped to ``clip`` when given."""
    n = len(values)
    if n == 0:
        raise ValueError("an interval needs at least one value")
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    half = Z95 * sd / math.sqrt(n)
    low, high = mean - half, mean + half
    if clip is not None:
        low, high = max(clip[0], low), min(clip[1], high)
    return Interval(mean, low, high)


def item_scores(rows: Iterable[Mapping[str, Any]]) -> dict[str, float]:
    """Each item's share of seeds whose final answer is correct, by item id."""
    return _mean_by_item(rows, "chosen")


def _mean_by_item(rows: Iterable[Mapping[str, Any]], key: str) -> dict[str, float]:
    by_item: dict[str, list[float]] = {}
    for row in rows:
        by_item.setdefault(row["id"], []).append(float(row[key]))
    return {item: sum(v) / len(v) for item, v in by_item.items()}


def paired_difference(
    rows: Iterable[Mapping[str, Any]], baseline: Iterable[Mapping[str, Any]]
) -> Interval:
    """The pass rate of ``rows`` minus the baseline's, paired by item (both must hold the
    same items)."""
    ours, theirs = item_scores(rows), item_scores(baseline)
    if set(ours) != set(theirs):
        raise ValueError("a paired difference needs the same items on both sides")
    return mean_interval([ours[i] - theirs[i] for i in sorted(ours)], clip=(-1.0, 1.0))


def seed_rates(rows: Iterable[Mapping[str, Any]]) -> dict[str, float]:
    """The pass rate of each seed (keys are the seeds as strings, for JSON)."""
    by_seed: dict[str, list[bool]] = {}
    for row in rows:
        by_seed.setdefault(str(row["seed"]), []).append(bool(row["chosen"]))
    return {seed: sum(v) / len(v) for seed, v in sorted(by_seed.items())}


def budget(rows: Sequence[Mapping[str, Any]], cap: int | None) -> dict[str, Any]:
    """Mean tokens per request: the loop's (``loop_tokens``, bound by ``cap``) and all
    completion tokens (the judge's included); ``over_cap`` counts requests whose loop spent
    more than ``cap`` (it must be 0: the budget rule held)."""
    n = len(rows)
    if n == 0:
        raise ValueError("no rows")
    loop = [int(r["loop_tokens"]) for r in rows]
    total = [int(r["completion_tokens"]) for r in rows]
    return {
        "cap": cap,
        "mean_loop_tokens": sum(loop) / n,
        "max_loop_tokens": max(loop),
        "mean_completion_tokens": sum(total) / n,
        "mean_verifier_tokens": (sum(total) - sum(loop)) / n,
        "over_cap": 0 if cap is None else sum(t > cap for t in loop),
    }


def summarise_cell(
    rows: Sequence[Mapping[str, Any]],
    baselines: Mapping[str, Sequence[Mapping[str, Any]]],
    cap: int | None,
) -> dict[str, Any]:
    """A (suite, config) cell: pass rate with interval, per-seed rates, draft pass rate,
    flips, the paired difference to each of ``baselines`` (by name), tokens."""
    if not rows:
        raise ValueError("no rows")
    return {
        "n_items": len({r["id"] for r in rows}),
        "n_requests": len(rows),
        "pass_rate": mean_interval(list(item_scores(rows).values())).to_json(),
        "draft_pass_rate": sum(bool(r["draft"]) for r in rows) / len(rows),
        "seeds": seed_rates(rows),
        "flips": count_flips(rows),
        "vs": {name: paired_difference(rows, b).to_json() for name, b in baselines.items()},
        "tokens": budget(rows, cap),
        "constraints_met": None
        if any(r.get("constraints_met") is None for r in rows)
        else mean_interval(list(_mean_by_item(rows, "constraints_met").values())).to_json(),
        "verifier_on_drafts": verifier_on_drafts(rows),
        "verifier_auroc_on_drafts": auroc(
            [float(r["scores"][0]) for r in rows], [bool(r["draft"]) for r in rows]
        ),
        "mean_rounds": sum(int(r["rounds"]) for r in rows) / len(rows),
        "mean_seconds": sum(float(r["seconds"]) for r in rows) / len(rows),
    }


Verdict = Literal["helps", "hurts", "no measurable difference"]
VERDICTS: tuple[str, ...] = get_args(Verdict)


def verdict(difference: Mapping[str, float]) -> Verdict:
    """``helps`` when the paired difference's interval lies above 0, ``hurts`` when below,
    otherwise ``no measurable difference``."""
    if difference["low"] > 0:
        return "helps"
    if difference["high"] < 0:
        return "hurts"
    return "no measurable difference"


def balanced_accuracy(threshold: float, scores: Sequence[float], truths: Sequence[bool]) -> float:
    """``(TPR + TNR) / 2`` of "accept when ``score >= threshold``" against ``truths``; plain
    accuracy when only one class is present."""
    accepted = [s >= threshold for s in scores]
    pos = [a for a, t in zip(accepted, truths, strict=True) if t]
    neg = [not a for a, t in zip(accepted, truths, strict=True) if not t]
    if pos and neg:
        return (sum(pos) / len(pos) + sum(neg) / len(neg)) / 2
    both = pos + neg
    return sum(both) / len(both)


def best_threshold(scores: Sequence[float], truths: Sequence[bool]) -> float:
    """The acceptance threshold that maximises :func:`balanced_accuracy` on a validation
    split; candidates are the scores themselves and 1.0 (the highest a request may set: it rejects
    all but a certain P(True)); ties go to the
    lowest."""
    if not scores or len(scores) != len(truths):
        raise ValueError("a threshold needs scores and truths of the same, non-zero length")
    candidates = sorted({*scores, 1.0})
    return max(candidates, key=lambda t: (balanced_accuracy(t, scores, truths), -t))


def verifier_on_drafts(rows: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """How the loop's verifier judged the first drafts, against the truth."""
    counts = dict.fromkeys(("true_accept", "false_accept", "true_reject", "false_reject"), 0)
    for row in rows:
        accepted, correct = bool(row["draft_accepted"]), bool(row["draft"])
        key = ("true_" if accepted == correct else "false_") + ("accept" if accepted else "reject")
        counts[key] += 1
    return counts


def auroc(scores: Sequence[float], truths: Sequence[bool]) -> float | None:
    """The area under the ROC curve of ``scores`` against ``truths``: the probability that a
    right answer scores above a wrong one, ties counting one half (Mann-Whitney,
    ``sum over pairs (right, wrong) of [s_r > s_w] + [s_r == s_w] / 2``, over
    ``n_right * n_wrong``); 0.5 is chance. None when one class is absent."""
    if len(scores) != len(truths):
        raise ValueError("scores and truths must have the same length")
    right = [s for s, t in zip(scores, truths, strict=True) if t]
    wrong = [s for s, t in zip(scores, truths, strict=True) if not t]
    if not right or not wrong:
        return None
    wins = sum((r > w) + 0.5 * (r == w) for r in right for w in wrong)
    return wins / (len(right) * len(wrong))
