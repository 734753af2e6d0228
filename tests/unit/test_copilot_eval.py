"""The copilot eval's pure parts: the generated task, its scoring, the intervals, the appended
results file and the generated page's plain verdicts."""

import json
import random

import pytest

from evals.copilot import cell, keep_legacy, paired_bootstrap, verdicts, wilson, write_docs
from evals.copilot_task import SPLIT_SIZES, make_item, parse_answer, splits
from evals.results import BY_HAND, append_run, read_runs


def test_items_are_worked_correctly_and_splits_are_seeded_and_disjoint():
    rng = random.Random(3)
    for _ in range(200):
        item = make_item(rng)
        expression = item.prompt.removeprefix("Compute ").split(".")[0]
        assert eval(expression) == item.answer  # the prompt's own arithmetic, as Python does it
        assert parse_answer(item.response) == item.answer
        step1, step2 = item.response.split(". ")[:2]
        assert eval(step1.replace("=", "==")) and eval(step2.replace("=", "=="))
    a, b = splits(5), splits(5)
    assert a == b and a != splits(6)
    prompts = [{i.prompt for i in a[s]} for s in ("train", "val", "test")]
    assert sum(map(len, prompts)) == len(set().union(*prompts)) == sum(SPLIT_SIZES.values())


@pytest.mark.parametrize(
    ("text", "answer"),
    [
        ("47 - 18 = 29. 29 * 6 = 174. Answer: 174", 174),
        ("Answer: -12 because 3 - 15 = -12. Done 99", -12),  # "Answer:" wins over later numbers
        ("The result is 41, I think.", 41),
        ("first 3 then 8", 8),
        ("no idea", None),
    ],
)
def test_the_answer_is_read_after_answer_else_the_last_integer(text, answer):
    assert parse_answer(text) == answer


def test_wilson_interval():
    assert wilson(50, 100) == (40.4, 59.6)
    lo, hi = wilson(0, 200)
    assert lo == 0.0 and 0 < hi < 2.5


def test_paired_bootstrap_centres_on_the_difference():
    base = [True] * 50 + [False] * 150
    assert paired_bootstrap(base, base) == [0.0, 0.0]
    better = [True] * 100 + [False] * 100  # 50 answers fixed, none broken: +25 points
    lo, hi = paired_bootstrap(base, better)
    assert 15 < lo < 25 < hi < 35


def run_with(diffs: dict, lambdas: dict) -> dict:
    test = {
        "pilot": cell([True] * 10 + [False] * 90),
        "pilot + copilot": cell([True] * 10 + [False] * 90),
        "fine-tuned": cell([True] * 30 + [False] * 70),
        "fine-tuned + joint copilot": cell([True] * 40 + [False] * 60),
    }
    sweep = {"0": cell([True, False]), "1": cell([True, True])}
    pair = {
        "order": "AB",
        "plain_tok_s": 60.0,
        "copilot_tok_s": 50.0,
        "overhead_pct": 20.0,
        "load_average_1m": 3.5,
    }
    over = {"pairs": [pair] * 5, "median_overhead_pct": 20.0}
    return {
        "command": "corrigo eval copilot",
        "machine_note": "shared",
        "task": {
            "generator": "evals/copilot_task.py",
            "seed": 0,
            "items": {"train": 1, "val": 2, "test": 100},
        },
        "training": {"joint": {"epochs": 3, "lr": 1e-4}, "settings": {"max_steps": 200}},
        "val": {
            "pilot": cell([True]),
            "pilot + copilot": sweep,
            "fine-tuned": cell([True]),
            "fine-tuned + joint copilot": sweep,
        },
        "lambda": lambdas,
        "test": test,
        "differences": diffs,
        "fine_tuning": {"points": 20.0, "ci95": [10.0, 30.0]},
        "overhead": {
            "lambda": 1.0,
            "tokens": 48,
            "c=1": {**over, "min_overhead_pct": 20.0, "max_overhead_pct": 20.0},
        },
        "wall_seconds": 100.0,
    }


def test_the_page_says_plainly_where_the_copilot_does_not_help(tmp_path):
    diffs = {
        "pilot + copilot": {"points": 0.0, "ci95": [0.0, 0.0], "fixed": 0, "broken": 0},
        "fine-tuned + joint copilot": {
            "points": 10.0,
            "ci95": [4.0, 16.0],
            "fixed": 12,
            "broken": 2,
        },
    }
    run = run_with(diffs, {"pilot + copilot": 0.0, "fine-tuned + joint copilot": 1.0})
    [first, second] = verdicts(run)
    assert "pilot + copilot: does not help" in first and "lambda 0" in first
    assert "fine-tuned + joint copilot: helps" in second and "+10.0" in second
    unclear = {"x": {"points": 1.0, "ci95": [-2.0, 4.0], "fixed": 3, "broken": 2}}
    assert "no measurable effect" in verdicts({"differences": unclear, "lambda": {"x": 2.0}})[0]
    hurts = {"x": {"points": -5.0, "ci95": [-9.0, -1.0], "fixed": 1, "broken": 6}}
    assert "hurts" in verdicts({"differences": hurts, "lambda": {"x": 0.5}})[0]

    path = tmp_path / "copilot.json"
    meta = {"commit": "abc1234", "started": "2026-12-05T12:00:00Z", "cpu": "cpu", "cores": 2}
    meta |= {"bf16_flags": [], "native_bf16": False, "load_average_before": [3.0, 3.0, 3.0]}
    (tmp_path / "copilot.md").write_text(f"old page\n{BY_HAND}\nA reading kept by hand.\n")
    write_docs(tmp_path, append_run(path, run, meta))
    page = (tmp_path / "copilot.md").read_text()
    assert first in page and second in page
    assert "old page" not in page and page.endswith(f"{BY_HAND}\nA reading kept by hand.\n")
    assert "AB 60.0/50.0 (+20.0%, load 3.5)" in page and "**+20.0**" in page
    assert (tmp_path / "copilot.png").stat().st_size > 0


def test_the_single_result_file_of_before_becomes_the_first_run(tmp_path):
    path = tmp_path / "copilot.json"
    path.write_text(json.dumps({"heldout": {"pilot": 54.2}}))  # the file before runs existed
    keep_legacy(path)
    keep_legacy(path)  # once only
    [run] = read_runs(path)
    assert run["heldout"] == {"pilot": 54.2} and "legacy" in run
    path.write_text("[1, 2]")
    with pytest.raises(ValueError, match="not a results file"):
        keep_legacy(path)
