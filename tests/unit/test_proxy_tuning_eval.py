"""The proxy-tuning eval's task: splits by fact, the answer form and its scoring
(evals/proxy_tuning.py)."""

from evals.proxy_tuning import SPLITS, answer_form, task_form, task_items, task_right


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
