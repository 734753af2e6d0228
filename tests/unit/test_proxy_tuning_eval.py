"""The proxy-tuning eval's task: splits by fact, the answer form and its scoring
(evals/proxy_tuning.py)."""

import math
import statistics

import pytest
from transformers import AutoTokenizer

from adapters.default_model import ensure_default_model
from decoding.proxy_tuning.prompts import load_format
from evals.proxy_tuning import SPLITS, answer_form, task_form, task_items, task_right
from evals.proxy_tuning_formats import (
    BARE_BASE,
    BARE_TEMPLATE,
    CONDITIONS,
    check_report,
    choose_alpha,
    correction,
    paired_by_fact,
    server_config,
    summarise,
    system_name,
)
from evals.refinement_stats import Z95
from evals.server import EVAL_CONFIG
from server.config import load_config


def test_every_wording_of_a_fact_stays_in_one_split_and_no_fact_is_in_two():
    owners = {split: {f.question for _, f in task_items(split)} for split in SPLITS}
    assert not owners["train"] & owners["validation"]
    assert not owners["train"] & owners["test"]
    assert not owners["validation"] & owners["test"]
    for split in SPLITS:
        items = task_items(split)
        assert len(items) == 4 * len(owners[split])  # the question and its three paraphrases
    assert len(task_items("test")) >= 100  # one question is under one point


def test_the_split_is_the_same_on_every_call():
    assert task_items("test") == task_items("test")


def test_right_needs_the_form_and_the_answer():
    _, fact = task_items("test")[0]
    assert task_right(answer_form(fact), fact)
    assert task_right(f"Answer: {fact.target}\nmore text", fact)
    assert not task_right(f"The answer is {fact.target}.", fact)  # the base's usual form
    assert not task_right("Answer: Atlantis.", fact)  # the form without the answer
    assert not task_right(f"Answer: it could be many things, maybe {fact.target}", fact)
    assert task_form("Answer: Atlantis.") and not task_form(f"{fact.target}.")
    assert not task_right("", fact)


# -- the per-model prompts row (evals/proxy_tuning_formats.py) ----------------------------------


def test_alpha_is_the_best_on_validation_and_the_smaller_on_a_tie():
    assert choose_alpha({0.1: 0.2, 0.5: 0.4, 1.0: 0.3}) == 0.5
    assert choose_alpha({2.0: 0.4, 0.25: 0.4, 1.0: 0.1}) == 0.25
    with pytest.raises(ValueError):
        choose_alpha({})


def test_paired_difference_is_the_accuracy_difference_with_an_interval_over_facts():
    # Three facts of four questions; per model wins a whole fact, loses one question elsewhere.
    facts = [f for f in "abc" for _ in range(4)]
    old = [False] * 4 + [True] * 4 + [False] * 4
    new = [True] * 4 + [True, True, True, False] + [False] * 4
    d = paired_by_fact(new, old, facts)
    assert d["difference"] == pytest.approx(3 / 12)
    assert (d["facts"], d["items"], d["new_only"], d["old_only"]) == (3, 12, 4, 1)
    # Over facts: d_f = (1, -1/4, 0), mean 1/4, sd sqrt(((3/4)^2 + (1/2)^2 + (1/4)^2) / 2).
    half = Z95 * math.sqrt((0.75**2 + 0.5**2 + 0.25**2) / 2) / math.sqrt(3)
    assert (d["low"], d["high"]) == (pytest.approx(0.25 - half), pytest.approx(min(1, 0.25 + half)))
    # The same questions as independent items would give a narrower interval: not this one.
    per_item = (
        Z95 * statistics.stdev([n - o for n, o in zip(new, old, strict=True)]) / math.sqrt(12)
    )
    assert d["high"] - d["low"] > 2 * per_item
    with pytest.raises(ValueError):
        paired_by_fact(new, old[:-1], facts)
    with pytest.raises(ValueError):
        paired_by_fact([], [], [])


def test_the_row_server_config_uses_the_real_keys(tmp_path):
    template = tmp_path / "bare.jinja"
    text = EVAL_CONFIG.format(max_rounds=1) + server_config(
        template, tmp_path / "expert", tmp_path / "anti"
    )
    (tmp_path / "corrigo.toml").write_text(text)
    config = load_config(tmp_path / "corrigo.toml", environ={})
    assert config.frontend == {"chat_template": str(template)}
    aux = config.aux_models
    assert (aux["expert"].chat_template, aux["anti"].chat_template) == (None, None)
    assert (aux["expert_chat"].chat_template, aux["anti_chat"].chat_template) == ("chat", "chat")
    assert {aux[n].path for n in aux} == {str(tmp_path / "expert"), str(tmp_path / "anti")}
    for condition in CONDITIONS:
        pair = correction(condition, 0.5)["proxy_tuning"]
        assert {pair["expert"], pair["anti_expert"]} <= set(aux)
        assert (aux[pair["expert"]].chat_template is None) == (condition == "one rendering")


def test_the_served_bare_template_renders_what_base_gives_an_aux_model():
    """The base reads the prompt as ``chat_template = "base"`` renders it (the row's premise)."""
    path = str(ensure_default_model())
    tokenizer = AutoTokenizer.from_pretrained(path)
    base = load_format("x", "base", path)
    for prompt, _ in task_items("test")[:8]:
        messages = [{"role": "user", "content": prompt}]
        text = tokenizer.apply_chat_template(
            messages, chat_template=BARE_TEMPLATE, tokenize=False, add_generation_prompt=True
        )
        assert text == f"{prompt}\n\n"
        assert tokenizer(text, add_special_tokens=False).input_ids == base.render(messages)


def test_the_row_refuses_a_server_that_did_not_run_the_declared_formats():
    prompts = {"expert_chat": "chat", "anti_chat": "chat"}
    check_report("one rendering", {"plugins": ["proxy_tuning"]})
    check_report("per model", {"plugins": ["proxy_tuning"], "proxy_tuning": {"prompts": prompts}})
    for condition, report in (
        ("per model", {"plugins": ["proxy_tuning"]}),  # chat_template ignored
        ("one rendering", {"plugins": ["proxy_tuning"], "proxy_tuning": {"prompts": prompts}}),
        ("per model", {"plugins": [], "proxy_tuning": {"prompts": prompts}}),
        ("per model", {"plugins": ["proxy_tuning"], "proxy_tuning": {"prompts": {"x": "chat"}}}),
        ("one rendering", None),
    ):
        with pytest.raises(RuntimeError):
            check_report(condition, report)


def _scores(validation: float, test: float) -> dict:
    cell = {"rate": test, "low": 0.0, "high": 1.0, "n": 4}
    return {
        "validation": {"accuracy": {**cell, "rate": validation}},
        "test": {"accuracy": cell, "form": cell, "knows": cell},
        "general": cell,
        "answers": {"test": ["Answer: x."]},
    }


def test_the_row_chooses_each_conditions_alpha_on_validation_and_pairs_the_test_items():
    record = {
        BARE_BASE: _scores(0.0, 0.0),
        system_name("one rendering", 0.5): _scores(0.1, 0.9),  # best on test, not validation
        system_name("one rendering", 1.0): _scores(0.2, 0.25),
        system_name("per model", 0.5): _scores(0.5, 0.5),
        system_name("per model", 1.0): _scores(0.5, 0.75),  # a tie: the smaller alpha wins
    }
    right = {
        system_name("one rendering", 0.5): [True] * 4,
        system_name("one rendering", 1.0): [True, False, False, False],
        system_name("per model", 0.5): [True, True, False, False],
        system_name("per model", 1.0): [True] * 4,
    }
    row = summarise(record, right, ["a", "a", "b", "b"])
    assert row["one rendering"]["chosen_alpha"] == 1.0
    assert row["per model"]["chosen_alpha"] == 0.5
    assert row["per model"]["chat_template"] == "chat"
    assert row["one rendering"]["chat_template"] is None
    assert sorted(row["per model"]["sweep"]) == [0.5, 1.0]
    assert row["per model - one rendering (test)"]["difference"] == pytest.approx(0.25)
