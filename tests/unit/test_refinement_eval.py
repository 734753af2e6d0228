"""The refinement eval's pure logic: the generated suites and their checkers, flips, intervals,
budgets, the request it sends (the truth never steers the loop) and the results file."""

import asyncio
import gzip
import json
import random

import pytest

from decoding.refinement import (
    VERIFIER_TYPES_CONTEXT,
    VerifyContext,
    build_verifier,
    parse_verifier,
)
from decoding.refinement.params import RefinementParams
from evals import refinement as ev
from evals import refinement_stats as st
from evals.refinement_report import page, write_page
from evals.refinement_suites import (
    CONSTRAINT_KINDS,
    GROUPS,
    ITEMS,
    Constraint,
    check,
    constraints_of,
    draw_constraints,
    generate,
    truth_spec,
    write,
)
from evals.results import BY_HAND
from server.refinement.verifiers import SERVER_VERIFIER_TYPES

CONTEXT = {VERIFIER_TYPES_CONTEXT: SERVER_VERIFIER_TYPES}


def _exact(spec, text):
    verifier = build_verifier(parse_verifier(spec, CONTEXT), SERVER_VERIFIER_TYPES)
    assert verifier.exact
    return asyncio.run(verifier.verify(text, VerifyContext([]))).accepted


# --- suites -----------------------------------------------------------------------------------


@pytest.mark.parametrize("suite", ["multi_constraint", "arithmetic_generated"])
def test_shipped_suites_are_what_the_seeded_generator_writes(suite, tmp_path):
    write(tmp_path, [suite])
    shipped = (ev.SUITES_DIR / f"{suite}.jsonl").read_text()
    assert (tmp_path / f"{suite}.jsonl").read_text() == shipped
    items = ev.load_suite(suite)
    # One item weighs under 2 points of a pass rate.
    assert len(items) == ITEMS >= 60 and 1 / len(items) < 0.02
    assert len({i["id"] for i in items}) == len(items)
    assert generate(suite, seed=1) != generate(suite)


def test_every_instruction_has_2_to_4_constraints_from_distinct_groups():
    sizes = set()
    for item in ev.load_suite("multi_constraint"):
        constraints = constraints_of(item)
        sizes.add(len(constraints))
        groups = [next(g for g in GROUPS if c.kind in g) for c in constraints]
        assert len(set(groups)) == len(groups), item["id"]
        assert not {"lowercase", "start_word"} <= {c.kind for c in constraints}
        for c in constraints:
            assert c.instruction() in item["prompt"]
        assert len(item["verifier"]["all"]) == len(constraints)
    assert sizes == {2, 3, 4}


def test_draws_cover_every_constraint_kind():
    rng = random.Random(0)
    kinds = {c.kind for _ in range(300) for c in draw_constraints(rng)}
    assert kinds == set(CONSTRAINT_KINDS)


CASES = [
    (Constraint("lowercase"), "the sea is calm.", True),
    (Constraint("lowercase"), "The sea is calm.", False),
    (Constraint("lowercase"), "   ", False),
    (Constraint("no_commas"), "calm and blue", True),
    (Constraint("no_commas"), "calm, blue", False),
    (Constraint("include_word", "blue"), "A Blue sky.", True),
    (Constraint("include_word", "blue"), "bluebird sky", False),
    (Constraint("include_word", "blue"), "sky-blue!", True),
    (Constraint("end_word", "golden"), 'The leaves turn golden."', True),
    (Constraint("end_word", "golden"), "Golden leaves fall.", False),
    (Constraint("end_word", "golden"), "It is ungolden.", False),
    (Constraint("end_exclamation"), "What a day!  \n", True),
    (Constraint("end_exclamation"), "What a day! Indeed.", False),
    (Constraint("start_word", "Today"), '"Today the sea', True),
    (Constraint("start_word", "Today"), "Todays sea", False),
    (Constraint("start_word", "Today"), "I say Today", False),
    (Constraint("max_words", "3"), "one two three", True),
    (Constraint("max_words", "3"), "one two three four", False),
    (Constraint("max_words", "3"), "", False),
    (Constraint("min_words", "3"), "one two three", True),
    (Constraint("min_words", "3"), "one two", False),
    (Constraint("include_digit"), "in 1999 it", True),
    (Constraint("include_digit"), "in nineteen", False),
]


@pytest.mark.parametrize(("constraint", "text", "expected"), CASES)
def test_checker_and_exact_truth_agree_on_known_cases(constraint, text, expected):
    assert check(constraint, text) is expected
    assert _exact(truth_spec(constraint), text) is expected


def test_checker_and_exact_truth_agree_on_random_texts():
    rng = random.Random(7)
    vocab = ["the", "Blue", "blue", "sea,", "golden", "golden.", "Today", "today", "9", "!",
             "quiet", "'warm'", "bluebird", "\n", "Every", "river!"]  # fmt: skip
    constraints = [c for _ in range(40) for c in draw_constraints(rng)]
    for _ in range(400):
        text = " ".join(rng.choice(vocab) for _ in range(rng.randint(0, 14)))
        for c in rng.sample(constraints, 6):
            assert check(c, text) == _exact(truth_spec(c), text), (c, text)


def test_item_truth_needs_every_constraint():
    item = ev.load_suite("multi_constraint")[0]
    constraints = constraints_of(item)
    good = "Sometimes the warm autumn wind carries leaves over quiet streets!"
    assert all(check(c, good) for c in constraints), constraints
    assert _exact(item["verifier"], good)
    assert not _exact(item["verifier"], good.rstrip("!") + ".")


# --- flips, intervals, budgets ----------------------------------------------------------------


def _row(item, chosen, draft=False, seed=0, loop=10, total=10, config="c", score=0.5):
    return {"id": item, "seed": seed, "draft": draft, "chosen": chosen, "config": config,
            "loop_tokens": loop, "completion_tokens": total, "rounds": 1, "seconds": 1.0,
            "draft_accepted": True, "constraints_met": None, "stop_reason": "accepted",
            "scores": [score]}  # fmt: skip


def test_flips_count_both_directions():
    rows = [_row("a", True, False), _row("b", False, True), _row("c", True, True),
            _row("d", False, False), _row("e", False, True)]  # fmt: skip
    assert st.count_flips(rows) == {"incorrect_to_correct": 1, "correct_to_incorrect": 2}
    assert st.flip(True, True) is None and st.flip(False, True) == "incorrect_to_correct"


def test_mean_interval_by_hand():
    # [0, 0, 1, 1] twice: mean 0.5, variance (n - 1) 8 * 0.25 / 7; half width Z95 * sd / sqrt(8).
    got = st.mean_interval([0, 0, 1, 1] * 2)
    half = st.Z95 * (2 / 7) ** 0.5 / 8**0.5
    assert got.mean == 0.5
    assert got.low == pytest.approx(0.5 - half) and got.high == pytest.approx(0.5 + half)
    assert st.mean_interval([1, 1, 1]) == st.Interval(1.0, 1.0, 1.0)
    assert st.mean_interval([0.0, 1.0]).low == 0.0  # clipped
    assert st.mean_interval([-1.0, 1.0], clip=(-1, 1)).low == -1.0
    with pytest.raises(ValueError):
        st.mean_interval([])


def test_item_scores_average_over_seeds_and_differences_pair_by_item():
    rows = [_row("a", True, seed=0), _row("a", False, seed=1), _row("b", True, seed=0),
            _row("b", True, seed=1)]  # fmt: skip
    assert st.item_scores(rows) == {"a": 0.5, "b": 1.0}
    base = [_row("a", False, seed=s) for s in (0, 1)] + [_row("b", True, seed=s) for s in (0, 1)]
    diff = st.paired_difference(rows, base)
    assert diff.mean == pytest.approx(0.25)
    # Pairing: the same shift on every item gives a zero-width interval.
    shifted = [_row(i, True, seed=0) for i in "abc"]
    assert st.paired_difference(shifted, [_row(i, False) for i in "abc"]) == st.Interval(1, 1, 1)
    with pytest.raises(ValueError):
        st.paired_difference(rows, [_row("z", True)])
    assert st.seed_rates(rows) == {"0": 1.0, "1": 0.5}


def test_budget_accounting_separates_judge_tokens_and_flags_overruns():
    rows = [_row("a", True, loop=30, total=40), _row("b", True, loop=36, total=36)]
    got = st.budget(rows, cap=36)
    assert got["mean_loop_tokens"] == 33 and got["max_loop_tokens"] == 36
    assert got["mean_verifier_tokens"] == 5 and got["over_cap"] == 0
    assert st.budget(rows, cap=35)["over_cap"] == 1


def test_threshold_is_chosen_for_balanced_accuracy():
    scores = [0.9, 0.8, 0.7, 0.6, 0.95]
    truths = [True, True, False, False, False]
    # Accept >= 0.8: TPR 1, TNR 2/3; the majority class alone (reject all) scores 0.5.
    assert st.best_threshold(scores, truths) == 0.8
    assert st.balanced_accuracy(0.8, scores, truths) == pytest.approx((1 + 2 / 3) / 2)
    # One class only: plain accuracy, so every wrong draft is rejected.
    assert st.best_threshold([0.6, 0.9], [False, False]) == 1.0
    with pytest.raises(ValueError):
        st.best_threshold([], [])


def test_verifier_on_drafts_counts_its_mistakes():
    rows = [{"draft_accepted": a, "draft": t} for a, t in
            [(True, True), (True, False), (True, False), (False, True), (False, False)]]  # fmt: skip
    assert st.verifier_on_drafts(rows) == {
        "true_accept": 1, "false_accept": 2, "true_reject": 1, "false_reject": 1
    }  # fmt: skip


def test_calibration_items_are_disjoint_from_the_suite():
    for suite in ("multi_constraint", "arithmetic_generated"):
        val = ev.calibration_items(suite)
        shipped = ev.load_suite(suite)
        assert len(val) == ev.CALIBRATION_ITEMS
        assert not {i["id"] for i in val} & {i["id"] for i in shipped}
        assert [i["prompt"] for i in val] != [i["prompt"] for i in shipped[: len(val)]]


def test_verdict_reads_the_interval():
    assert st.verdict({"mean": 0.1, "low": 0.01, "high": 0.2}) == "helps"
    assert st.verdict({"mean": -0.1, "low": -0.2, "high": -0.01}) == "hurts"
    assert st.verdict({"mean": 0.1, "low": -0.01, "high": 0.2}) == "no measurable difference"


# --- what the eval sends and records ------------------------------------------------------------


ITEM = {"id": "x", "prompt": "What is 2 + 2?",
        "verifier": {"type": "answer", "reference": 4, "mode": "numeric"}}  # fmt: skip


@pytest.mark.parametrize("config", ev.CONFIGS)
def test_the_loop_verifier_is_never_the_truth(config):
    thresholds = {"p_true": 0.7, "p_true_samples": 0.6}
    job = ev.Job("arithmetic_generated", config, 2, ITEM)
    body = ev.request_body(job, "m", 3, 0.8, thresholds)
    refinement = body["correction"]["refinement"]
    assert refinement["truth"] == ITEM["verifier"]
    assert refinement["verifier"]["type"] in ("p_true", "judge")
    # Each P(True) verifier gets its own threshold; P(True) after samples shows them.
    if config.endswith("@p_true_samples"):
        assert refinement["verifier"] == {"type": "p_true", "samples": ev.P_TRUE_SAMPLES,
                                          "threshold": 0.6}  # fmt: skip
    else:
        assert refinement["verifier"].get("samples", 0) == 0
        assert refinement["verifier"].get("threshold", 0.7) == 0.7
    assert body["seed"] == 2 and body["temperature"] == 0.0
    if config == ev.SINGLE:
        assert refinement["max_rounds"] == 1 and "max_total_tokens" not in refinement
    else:
        # The same budget for every non-single configuration.
        assert refinement["max_rounds"] == 3
        assert refinement["max_total_tokens"] == 3 * ev.MAX_TOKENS["arithmetic_generated"]
    # What a server would accept.
    RefinementParams.model_validate(refinement, context=CONTEXT)


def test_self_consistency_votes_over_k_samples():
    body = ev.request_body(ev.Job("multi_constraint", "self_consistency", 0, ITEM), "m", 3, 0.8)
    refinement = body["correction"]["refinement"]
    assert refinement["strategy"] == "aggregate" and refinement["samples"] == 3
    assert "escalate" not in refinement
    with pytest.raises(ValueError):
        ev.config_parts("best_of_n@answer")


def test_escalate_samples_k_minus_one_and_refines_unless_they_all_agree():
    job = ev.Job("arithmetic_generated", "escalate@p_true", 0, ITEM)
    body = ev.request_body(job, "m", 3, 0.8, {"p_true": 0.7})
    refinement = body["correction"]["refinement"]
    assert refinement["strategy"] == "aggregate" and refinement["samples"] == 2
    assert refinement["escalate"] == "try_again" and refinement["tau"] == 1.0
    assert refinement["max_rounds"] == 3  # one round left to the refiner, same budget
    assert refinement["max_total_tokens"] == 3 * ev.MAX_TOKENS["arithmetic_generated"]
    assert refinement["verifier"] == {"type": "p_true", "threshold": 0.7}
    RefinementParams.model_validate(refinement, context=CONTEXT)


def _payload(draft, chosen, flip):
    return {
        "choices": [{"message": {"content": "4"}}],
        "usage": {"completion_tokens": 12, "prompt_tokens": 50},
        "correction": {"refinement": {"rounds": 2, "stop_reason": "accepted", "tokens": 9,
                                      "accepted": True, "truth": {"draft": draft,
                                      "chosen": chosen, "flip": flip},
                                      "candidates": [{"verdict": {"accepted": False,
                                                                  "score": 0.25}},
                                                     {"verdict": {"accepted": True,
                                                                  "score": 0.75}}]}},
    }  # fmt: skip


def test_row_fails_closed_on_a_missing_or_inconsistent_truth():
    job = ev.Job("arithmetic_generated", "try_again@p_true", 0, ITEM)
    row = ev.row_of(job, _payload(False, True, "incorrect_to_correct"), 1.0)
    assert row["loop_tokens"] == 9 and row["completion_tokens"] == 12
    assert row["scores"] == [0.25, 0.75] and row["draft_accepted"] is False
    assert row["constraints_met"] is None
    with pytest.raises(RuntimeError, match="disagrees"):
        ev.row_of(job, _payload(False, True, None), 1.0)
    payload = _payload(False, True, None)
    del payload["correction"]["refinement"]["truth"]
    with pytest.raises(RuntimeError, match="no truth"):
        ev.row_of(job, payload, 1.0)


def test_complete_seeds_drop_a_seed_cut_by_the_deadline():
    jobs = [ev.Job("s", "single", seed, {"id": i}) for seed in (0, 1) for i in "ab"]
    rows = [{"suite": "s", "config": "single", "seed": 0, "id": i} for i in "ab"]
    rows.append({"suite": "s", "config": "single", "seed": 1, "id": "a"})
    assert ev.complete_seeds(rows, jobs) == [0]


def test_runs_are_appended_and_a_legacy_file_is_kept(tmp_path):
    path = tmp_path / "refinement.json"
    path.write_text(json.dumps({"suites": {"old": 1}}))
    ev.append_run(path, {"n": 1})
    results = ev.append_run(path, {"n": 2})
    assert [r.get("n") for r in results["runs"]] == [None, 1, 2]
    assert results["runs"][0]["kind"] == ev.LEGACY and results["runs"][0]["suites"] == {"old": 1}
    assert json.loads(path.read_text()) == results


def test_only_the_latest_run_keeps_its_rows_and_earlier_rows_are_archived_whole(tmp_path):
    path = tmp_path / "refinement.json"
    first, second = [{"id": "a"}, {"id": "b"}], [{"id": "c"}]
    ev.append_run(path, {"n": 1, "items": first})
    ev.append_run(path, {"n": 2, "items": second})
    results = ev.append_run(path, {"n": 3, "items": [{"id": "d"}]})
    assert results["runs"][-1]["items"] == [{"id": "d"}]
    assert all("items" not in r for r in results["runs"][:-1])
    assert results["runs"][0]["items_archived"] == "refinement-rows.json.gz#/0"
    archive = json.loads(gzip.decompress(ev.rows_archive(path).read_bytes()))
    assert archive == {"0": first, "1": second}


def test_page_says_plainly_when_nothing_helps():
    rows = []
    for config in ("single", "self_consistency", "try_again@p_true"):
        for i in range(10):
            for seed in (0, 1, 2):
                rows.append(_row(f"i{i}", i < 3, draft=i < 3, seed=seed, config=config)
                            | {"suite": "arithmetic_generated"})  # fmt: skip
    summary = ev.summarise(rows, 3)
    cell = summary["arithmetic_generated"]["try_again@p_true"]
    assert cell["vs"]["single"] == {"mean": 0.0, "low": 0.0, "high": 0.0}
    assert cell["pass_rate"]["mean"] == pytest.approx(0.3)
    run = {"settings": {"rounds": 3, "seeds": [0, 1, 2], "temperature": 0.8,
                        "max_tokens": {"arithmetic_generated": 12},
                        "verifiers": ev.VERIFIERS,
                        "p_true_thresholds": {"arithmetic_generated": 0.5}},
           "summary": summary, "model": "m", "cpu_count": 2, "cpu_model": "x",
           "load_average": [1, 1, 1], "load_average_after": [1, 1, 1], "commit": "abc",
           "dirty": False, "started_utc": "t", "requests": 90, "seconds": 1,
           "summarised_seeds": [0, 1, 2], "complete": True, "items": rows}  # fmt: skip
    text = page({"runs": [{"kind": ev.LEGACY}, run]})
    assert "No configuration beats single-shot" in text
    assert "`try_again@p_true`: vs single: no measurable difference" in text
    assert "runs[1]" in text
    assert "`try_again@p_true` never went past the draft" in text
    assert "| accepted 30 |" in text


# --- P(True) after the model's own samples -------------------------------------------------------


def test_p_true_samples_configurations_parse_and_pair_with_plain_p_true():
    assert ev.config_parts("best_of_n@p_true_samples") == ("best_of_n", "p_true_samples")
    assert ev.config_parts("single@p_true_samples") == ("single", "p_true_samples")
    assert ev.counterpart("best_of_n@p_true_samples") == "best_of_n@p_true"
    assert ev.counterpart("try_again@p_true_samples") == "try_again@p_true"
    assert ev.counterpart("single@p_true_samples") == ev.SINGLE
    assert ev.counterpart("best_of_n@p_true") is None and ev.counterpart(ev.SINGLE) is None
    # Each new configuration runs by default beside its one-candidate counterpart.
    for suite, configs in ev.DEFAULT_CONFIGS.items():
        new = [c for c in configs if c.endswith("@p_true_samples")]
        assert {"best_of_n@p_true_samples", "try_again@p_true_samples"} <= set(new), suite
        assert all(ev.counterpart(c) in configs for c in new)
    assert ev.calibration_config("p_true") == ev.SINGLE
    assert ev.calibration_config("p_true_samples") == "single@p_true_samples"
    with pytest.raises(ValueError):
        ev.calibration_config("judge")
    with pytest.raises(ValueError):
        ev.config_parts("best_of_n@p_true_sample")


def test_a_greedy_draft_scored_after_samples_is_one_candidate():
    job = ev.Job("arithmetic_generated", "single@p_true_samples", 0, ITEM)
    refinement = ev.request_body(job, "m", 3, 0.8, {"p_true_samples": 0.4})["correction"][
        "refinement"
    ]
    assert refinement["max_rounds"] == 1 and "strategy" not in refinement
    assert refinement["verifier"]["samples"] == ev.P_TRUE_SAMPLES
    assert refinement["verifier"]["threshold"] == 0.4
    RefinementParams.model_validate(refinement, context=CONTEXT)


def test_calibration_scores_the_same_drafts_with_each_p_true_verifier_used():
    configs = {"arithmetic_generated": ("single", "best_of_n@p_true_samples", "best_of_n@judge"),
               "multi_constraint": ("single", "best_of_n@judge"),
               "arithmetic": ("single", "best_of_n@p_true_samples")}  # fmt: skip
    jobs = ev.calibration_jobs(list(configs), configs)
    by = {}
    for job in jobs:
        by.setdefault((job.suite, job.config), []).append(job.item["id"])
    # Plain P(True) is always fitted (single and self_consistency report it); P(True) after
    # samples only where a configuration uses it; the hand-written suite has no split.
    assert set(by) == {("arithmetic_generated", "single"),
                       ("arithmetic_generated", "single@p_true_samples"),
                       ("multi_constraint", "single")}  # fmt: skip
    same = by[("arithmetic_generated", "single")]
    assert by[("arithmetic_generated", "single@p_true_samples")] == same
    assert len(same) == ev.CALIBRATION_ITEMS and all(i.startswith("val-") for i in same)
    assert {job.seed for job in jobs} == {0}


def _scored(suite, config, score, draft):
    return {"suite": suite, "config": config, "scores": [score], "draft": draft}


def test_each_p_true_verifier_gets_its_own_threshold_from_its_own_scores():
    rows = [
        # Plain P(True): separates at 0.8.
        _scored("s", "single", 0.9, True), _scored("s", "single", 0.8, True),
        _scored("s", "single", 0.7, False), _scored("s", "single", 0.6, False),
        # After samples: the same drafts, other scores, separating at 0.3.
        _scored("s", "single@p_true_samples", 0.35, True),
        _scored("s", "single@p_true_samples", 0.3, True),
        _scored("s", "single@p_true_samples", 0.2, False),
        _scored("s", "single@p_true_samples", 0.1, False),
        _scored("t", "single", 0.5, False),
    ]  # fmt: skip
    assert ev.thresholds_from(rows) == {
        "p_true": {"s": 0.8, "t": 1.0},
        "p_true_samples": {"s": 0.3},
    }
    assert ev.calibration_auroc(rows) == {"p_true": {"s": 1.0, "t": None},
                                          "p_true_samples": {"s": 1.0}}  # fmt: skip


def test_auroc_by_hand():
    # Right: 0.9, 0.5; wrong: 0.5, 0.1. Pairs: (0.9 > 0.5), (0.9 > 0.1), (0.5 = 0.5: half),
    # (0.5 > 0.1): 3.5 of 4.
    assert st.auroc([0.9, 0.5, 0.5, 0.1], [True, True, False, False]) == 0.875
    assert st.auroc([0.1, 0.9], [True, False]) == 0.0
    assert st.auroc([0.3, 0.3], [True, False]) == 0.5
    assert st.auroc([0.3, 0.4], [True, True]) is None
    with pytest.raises(ValueError):
        st.auroc([0.1], [True, False])


def _p_true_samples_rows():
    """6 multi_constraint items x 2 seeds: single and self-consistency right on i0-i1,
    best_of_n@p_true on i0, best_of_n@p_true_samples on i0-i2; drafts right (score 0.9) on
    i0-i1, wrong (0.2) elsewhere."""
    rows = []
    for i in range(6):
        for seed in (0, 1):
            for config, chosen in (("single", i < 2), ("self_consistency", i < 2),
                                   ("best_of_n@p_true", i < 1), ("best_of_n@p_true_samples", i < 3)):  # fmt: skip
                rows.append(_row(f"i{i}", chosen, draft=i < 2, seed=seed, config=config,
                                 score=0.9 if i < 2 else 0.2) | {"suite": "multi_constraint"})  # fmt: skip
    return rows


def test_p_true_samples_is_paired_with_plain_p_true_on_the_same_items():
    rows = _p_true_samples_rows()
    cells = ev.summarise(rows, 3)["multi_constraint"]
    vs = cells["best_of_n@p_true_samples"]["vs"]
    assert set(vs) == {"single", "self_consistency", "best_of_n@p_true"}
    # Items i1 and i2 gain over the one-candidate P(True): +2/6 on every item pair's mean.
    assert vs["best_of_n@p_true"]["mean"] == pytest.approx(2 / 6)
    assert vs["single"]["mean"] == pytest.approx(1 / 6)
    assert set(cells["best_of_n@p_true"]["vs"]) == {"single", "self_consistency"}
    # Its scores separate right drafts (0.9) from wrong ones (0.2) perfectly.
    assert cells["best_of_n@p_true_samples"]["verifier_auroc_on_drafts"] == 1.0


def _run(rows, summary, **settings):
    return {"settings": {"rounds": 3, "seeds": [0, 1], "temperature": 0.8,
                         "max_tokens": {"multi_constraint": 32}, "verifiers": ev.VERIFIERS,
                         "p_true_thresholds": {"multi_constraint": 0.5}, **settings},
            "summary": summary, "model": "m", "cpu_count": 2, "cpu_model": "x",
            "load_average": [1, 1, 1], "load_average_after": [1, 1, 1], "commit": "abc",
            "dirty": False, "started_utc": "t", "requests": len(rows), "seconds": 1,
            "summarised_seeds": [0, 1], "complete": True, "items": rows}  # fmt: skip


def test_page_sets_p_true_after_samples_beside_plain_p_true_and_keeps_the_reading(tmp_path):
    rows = _p_true_samples_rows()
    run = _run(rows, ev.summarise(rows, 3),
               thresholds={"p_true": {"multi_constraint": 0.5},
                           "p_true_samples": {"multi_constraint": 0.25}})  # fmt: skip
    run["calibration_auroc"] = {"p_true": {"multi_constraint": 0.6},
                                "p_true_samples": {"multi_constraint": 0.7}}  # fmt: skip
    text = page({"runs": [run]})
    assert "## P(True) after the model's own samples" in text
    assert "| `best_of_n` | 16.7% [" in text and "+33.3 [" in text
    assert "after samples 0.250" in text and "after samples 0.700" in text
    assert "`best_of_n@p_true_samples`: vs single: no measurable difference" in text
    assert "vs best_of_n@p_true:" in text
    # A rewrite keeps the reading written by hand below the marker.
    (tmp_path / "refinement.md").write_text(f"stale table\n{BY_HAND}\nThe reading.\n")
    write_page({"runs": [run]}, tmp_path)
    written = (tmp_path / "refinement.md").read_text()
    assert written.startswith(text.rstrip("\n")) and written.endswith(f"{BY_HAND}\nThe reading.\n")
    assert written.count(BY_HAND) == 1 and "stale table" not in written


def test_page_says_when_a_strategy_drew_nothing_after_the_draft_and_why():
    rows = []
    for i in range(4):
        for config in ("single", "best_of_n@p_true"):
            stop = "max_rounds" if config == "single" else "token_budget"
            rows.append(_row(f"i{i}", i < 1, draft=i < 1, config=config) | {"suite": "multi_constraint", "stop_reason": stop})  # fmt: skip
    text = page({"runs": [_run(rows, ev.summarise(rows, 3))]})
    assert (
        "`best_of_n@p_true` never went past the draft, though it was granted 3 candidates: it "
        "stopped with token_budget 4 after 10.0 loop tokens per request of the 96 it may spend"
    ) in text
    assert "`best_of_n@p_true` never went past the draft: its verifier accepted" not in text
