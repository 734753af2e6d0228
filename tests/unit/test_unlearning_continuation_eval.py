"""The continuation check's comparison in the unlearning eval: its split, its rule and its table
(evals/unlearning_continuation.py)."""

from evals.unlearning import Answer, Fact, NearTopic, continuation_comparison
from evals.unlearning_continuation import (
    DEFAULT,
    OFF,
    RETAIN_TOLERANCE,
    THRESHOLDS,
    choose,
    halves,
    label,
    settings,
    table,
)


def rates(leak: float, retain: float) -> dict:
    return {"leak": {"rate": leak}, "retain_accuracy": {"rate": retain}}


def validation(**by_threshold: tuple[float, float]) -> dict:
    rows = {OFF: rates(0.2, 0.6)}
    rows |= {label(t): rates(0.2, 0.6) for t in THRESHOLDS}
    rows |= {k.replace("t", "0."): rates(*v) for k, v in by_threshold.items()}
    return rows


def test_the_settings_turn_the_meaning_part_off_and_each_threshold_on():
    s = settings()
    assert s[OFF] == {"continuation": False}
    assert [s[label(t)]["check_threshold"] for t in THRESHOLDS] == list(THRESHOLDS)
    assert DEFAULT in s  # the shipped default is among the settings compared


def test_the_halves_are_disjoint_and_cover_every_item():
    v, t = halves(list(range(7)))
    assert v == [0, 2, 4, 6] and t == [1, 3, 5]


def test_the_lowest_validation_leak_wins():
    assert choose(validation(t7=(0.05, 0.6), t9=(0.1, 0.6))) == "0.7"


def test_a_tie_goes_to_the_higher_threshold_which_intervenes_less():
    assert choose(validation(t6=(0.05, 0.6), t8=(0.05, 0.6))) == "0.8"
    assert choose(validation()) == "0.9"


def test_a_threshold_that_costs_retain_accuracy_beyond_the_tolerance_is_not_eligible():
    costly = 0.6 - RETAIN_TOLERANCE - 0.01
    assert choose(validation(t6=(0.0, costly), t7=(0.1, 0.6))) == "0.7"
    within = 0.6 - RETAIN_TOLERANCE
    assert choose(validation(t6=(0.0, within), t7=(0.1, 0.6))) == "0.6"


def test_no_eligible_threshold_chooses_none():
    low = 0.6 - RETAIN_TOLERANCE - 0.1
    assert choose(validation(**{f"t{int(10 * t)}": (0.0, low) for t in THRESHOLDS})) is None


def test_the_table_marks_the_chosen_and_the_default_setting():
    c = {"rate": 0.25, "low": 0.1, "high": 0.5}
    row = {
        "validation": {"leak": c, "retain_accuracy": c},
        "test": {"leak_facts": c, "leak": c, "leak_probes": c, "retain_accuracy": c},
        "near_topic_accuracy": c,
    }
    section = {
        "split": {
            "validation_facts": 30,
            "test_facts": 29,
            "test_probes": 87,
            "validation_retain_questions": 64,
            "test_retain_questions": 60,
            "near_topic_questions": 46,
        },
        "rows": {OFF: row, "0.7": row, DEFAULT: row},
        "chosen": "0.7",
        "default": DEFAULT,
    }
    lines = table(section).splitlines()
    assert len(lines) == 5
    assert "meaning part off |" in lines[2]
    assert "check_threshold 0.7 (chosen)" in lines[3]
    assert f"check_threshold {DEFAULT} (default)" in lines[4]
    assert lines[3].count("25.0% [10, 50]") == 7


def test_the_comparison_scores_each_half_on_its_own_facts_only():
    facts = [
        Fact("forget", f"q{i}?", f"X{i}.", f"Target{i}", (), (), (f"p{i}?",)) for i in range(4)
    ]
    retain = [Fact("retain", f"r{i}?", f"R{i}.", f"Kept{i}", (), (), ()) for i in range(2)]
    near = [NearTopic("about", "n?", "Near", ())]

    def said(text: str) -> Answer:
        return Answer(text, "stop", "", True)

    # Only the validation facts (even positions) leak, and retain is answered.
    forget = [said("Target0"), said("no"), said("Target2"), said("no")]
    answers = {"forget": forget, "retain": [said("Kept0"), said("Kept1")], "near": [said("Near")]}
    result = continuation_comparison(
        facts,
        facts,
        retain,
        retain,
        near,
        {OFF: answers, **{label(t): answers for t in THRESHOLDS}},
    )
    row = result["rows"][OFF]
    assert row["validation"]["leak"]["rate"] == 1.0
    assert row["test"]["leak"]["rate"] == 0.0 and row["test"]["leak_probes"]["rate"] == 0.0
    assert row["test"]["retain_accuracy"]["rate"] == 1.0
    assert result["split"]["validation_facts"] == 2 and result["split"]["test_probes"] == 2
    assert result["chosen"] == label(max(THRESHOLDS))  # all tie: the higher threshold
