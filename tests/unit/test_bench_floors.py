"""bench/floors.py's arithmetic: each target's budget from the plain figures, what the measured
floor leaves, and a negative remainder kept negative (a budget the floor alone exceeds)."""

import pytest

from bench.copilot_step import COLD, HEAD
from bench.floors import FORGET_SET, PLAIN, copilot_rows, unlearning_rows


def _phase(system, c, period, plugins=0.0):
    return {"system": system, "concurrency": c, "period_ms": period, "plugins_ms": plugins}


PHASES = {
    "summary": [
        _phase("plain", 1, 40.0),
        _phase("copilot", 1, 45.0, plugins=3.0),
        _phase("unlearning", 1, 41.0),
        _phase("plain", 8, 50.0),
        _phase("copilot", 8, 58.0, plugins=5.0),
        _phase("unlearning", 8, 53.0),
    ]
}


def test_copilot_budget_and_what_it_leaves():
    serving = {
        "summary": [{"concurrency": 1, "flop_share": 0.05}, {"concurrency": 8, "flop_share": 0.05}]
    }
    step = {
        "summary": [
            {"batch": 1, "mode": HEAD + COLD, "median_ms": 1.0},
            {"batch": 1, "mode": HEAD, "median_ms": 0.1},
            {"batch": 8, "mode": HEAD + COLD, "median_ms": 1.5},
        ]
    }
    one, eight = copilot_rows(PHASES, serving, step)
    assert one["budget_ms"] == pytest.approx(1.5 * 0.05 * 40.0)  # 3.0
    assert one["outside_ms"] == pytest.approx(45.0 - 40.0 - 3.0)
    assert one["left_ms"] == pytest.approx(3.0 - 1.0 - 2.0)
    assert one["now_ms"] == pytest.approx(3.0 - 1.0)
    assert eight["left_ms"] == pytest.approx(1.5 * 0.05 * 50.0 - 1.5 - 3.0)
    assert eight["left_ms"] < 0  # the floor and the outside alone exceed the budget


def test_unlearning_budget_per_wave_and_per_step():
    records = [
        {"system": PLAIN, "concurrency": 8, "wall_s": w, "requests": 16} for w in (3.0, 3.4, 9.0)
    ]
    records.append({"system": FORGET_SET, "concurrency": 8, "wall_s": 1.0, "requests": 16})
    serving = {"args": {"max_tokens": 11}, "records": records}
    gate = {
        "summary": [
            {"pieces": 8, "median_ms": 9.0},
            {"concurrency": 8, "wave_pieces": 720, "linear_ms_at_matmul_rate": 80.0},
        ]
    }
    (row,) = unlearning_rows(PHASES, serving, gate)
    assert row["wave_s"] == pytest.approx(3.4 / 2)  # the median plain run, two waves of 8
    assert row["budget_ms"] == pytest.approx(1700.0 * (1 / 0.95 - 1))
    assert row["left_per_step_ms"] == pytest.approx((row["budget_ms"] - 80.0) / 10)
    assert row["now_per_step_ms"] == pytest.approx(53.0 - 50.0)
