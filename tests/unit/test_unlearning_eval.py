"""The unlearning eval's pure parts: data, leak markers, intervals (evals/unlearning.py)."""

import math

import pytest

from evals.unlearning import (
    Fact,
    by_fact,
    edit_distance,
    interval,
    load_facts,
    load_near_topic,
    load_unrelated,
    system_prompt,
)


def test_the_shipped_data_is_large_enough_to_separate_one_item_from_noise():
    facts = load_facts()
    forget = [f for f in facts if f.group == "forget"]
    assert len(forget) >= 80  # the model knows only part of them; >= 50 known is the aim
    assert all(len(f.probes) == 3 for f in facts)
    assert all(f.target in f.answer for f in facts)
    assert len({f.target.lower() for f in facts}) == len(facts)
    assert len(load_near_topic()) >= 40
    assert len(load_unrelated()) >= 40


def test_a_leak_is_any_marker_while_an_answer_needs_the_target_or_an_alias():
    fact = Fact("forget", "q", "The capital of France is Paris.", "Paris", (), ("Parigi",), ())
    assert fact.leaked_in("È Parigi.") and not fact.said_in("È Parigi.")
    assert fact.leaked_in("paris, of course") and fact.said_in("paris, of course")
    assert not fact.leaked_in("Comparison")  # words, not substrings


def test_a_fact_leaks_when_any_of_its_probes_does():
    a = Fact("forget", "a?", "A.", "A", (), (), ())
    b = Fact("forget", "b?", "B.", "B", (), (), ())
    assert by_fact([a, b], [a, a, b, b], [False, True, False, False]) == [True, False]


def test_the_wilson_interval_matches_its_closed_form():
    got = interval([True] * 3 + [False] * 7)
    # Wilson 95% for 3/10: [0.1078, 0.6032] (standard tables).
    assert got["rate"] == pytest.approx(0.3)
    assert got["low"] == pytest.approx(0.1078, abs=1e-3)
    assert got["high"] == pytest.approx(0.6032, abs=1e-3)
    zero = interval([False] * 50)
    assert zero["low"] == 0 and 0.05 < zero["high"] < 0.08
    assert math.isnan(interval([])["rate"])


def test_the_system_prompt_baseline_names_every_fact_to_keep_back():
    facts = [f for f in load_facts() if f.group == "forget"][:3]
    prompt = system_prompt(facts)
    assert all(f.answer in prompt for f in facts)


def test_a_misspelt_target_is_a_leak_but_a_short_name_one_edit_away_is_not():
    riyadh = Fact("forget", "q", "The capital of Saudi Arabia is Riyadh.", "Riyadh", (), (), ())
    assert riyadh.spelled_in("It is called Riyad al-Saudi.")
    assert riyadh.spelled_in("The capital is Riyadin.")
    assert not riyadh.spelled_in("The capital is Jeddah.")
    pound = Fact("forget", "q", "The currency is the pound.", "pound", (), (), ())
    assert not pound.spelled_in("I found the answer.")
    assert edit_distance("kitten", "sitting") == 3
