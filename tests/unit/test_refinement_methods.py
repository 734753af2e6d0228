"""localize (GLoRe), aggregate (self-consistency / MAgICoRe) and P(True) after the model's own
samples, driven by a scripted fake engine (tests/unit/test_refinement_loop.py's ``Script``)."""

import asyncio
import math

import pytest

from decoding.correction import parse_correction
from decoding.params import CorrectionError
from decoding.refinement import Services, VerifyContext, refine
from decoding.refinement.aggregate import with_samples
from decoding.refinement.steps import split_steps
from decoding.refinement.votes import final_answer, majority

from .test_refinement_loop import NUMERIC, QUESTION, Script, params

#: A step verifier for tests: a prefix fails once it holds an X.
NO_X = {"type": "regex", "pattern": "[^X]*", "full_match": True}


def run(p, script, ctx=None):
    return asyncio.run(refine(p, QUESTION, script, ctx))


# -- steps and votes ---------------------------------------------------------------------------


def test_steps_concatenate_to_the_text_and_respect_max_steps():
    text = "  First line\n\nSecond line\nThird.\n"
    steps = split_steps(text, "lines", 8)
    assert steps == ["  First line\n\n", "Second line\n", "Third.\n"]
    assert split_steps(text, "lines", 2) == ["  First line\n\n", "Second line\nThird.\n"]
    sentences = split_steps('He said "no." Then 3.5 left! Done? yes', "sentences", 8)
    assert sentences == ['He said "no." ', "Then 3.5 left! ", "Done? ", "yes"]
    for split in ("lines", "sentences"):
        for cap in (1, 2, 5):
            assert "".join(split_steps(text, split, cap)) == text
    assert split_steps("", "lines", 3) == [""]


def test_final_answer_is_the_last_number_else_the_last_line():
    assert final_answer("6 * 7 = 42.\nSo the answer is 1,000.50") == "1000.5"
    assert final_answer("It is 42.0") == final_answer("42") == "42"
    assert final_answer("-0.0") == "0"
    assert final_answer("Paris?\n\n  The answer:  PARIS. ") == "the answer:  paris".replace(
        "  ", " "
    )
    assert final_answer("   ") == ""


def test_majority_counts_and_breaks_ties_by_first_seen():
    vote = majority(["b", "a", "a", "b", "c"])
    assert vote.answer == "b" and vote.agreement == pytest.approx(0.4)
    assert vote.counts == (("b", 2), ("a", 2), ("c", 1))
    with pytest.raises(ValueError):
        majority([])


# -- localize ----------------------------------------------------------------------------------

DRAFT = "Compute 6 * 7.\nX 6 * 7 = 41\nSo the answer is 41"


def test_localize_rewrites_from_the_first_failing_step_and_reranks():
    script = Script(DRAFT, "6 * 7 = 42\nSo the answer is 42", "40")
    out = run(params(strategy="localize", step_verifier=NO_X, temperature=0.5), script)
    assert [c.step for c in out.candidates] == ["draft", "local", "global"]
    local = out.candidates[1]
    # The correct step is kept verbatim; the rest is the model's continuation.
    assert local.text == "Compute 6 * 7.\n6 * 7 = 42\nSo the answer is 42"
    turn = script.calls[1]["messages"]
    assert turn[:2] == [*QUESTION, {"role": "assistant", "content": DRAFT}]
    assert turn[2]["content"].startswith("Your answer above goes wrong at step 2:\nX 6 * 7 = 41\n")
    assert "The steps before it are correct:\nCompute 6 * 7.\n" in turn[2]["content"]
    restart = script.calls[2]["messages"]
    assert restart[1:] == [
        {"role": "assistant", "content": DRAFT},
        {"role": "user", "content": params().prompts.restart},
    ]
    assert script.calls[1]["temperature"] == script.calls[2]["temperature"] == 0.5
    assert out.chosen is local and out.stop_reason == "accepted"
    report = out.report()
    assert report["localize"]["rounds"] == [
        {
            "from": 0,
            "steps": 3,
            "first_failing_step": 2,
            "step_scores": [1.0, 0.0],
            "winner": "local",
        }
    ]


def test_localize_global_rewrite_can_win_and_rounds_continue_from_the_winner():
    script = Script(
        "X 41",  # draft: the first step fails
        "still 41",  # local (nothing kept)
        "Six sevens.\nX 43",  # global: better? no, also rejected; equal score -> draft kept
        "X 40",  # round 2 local
    )
    out = run(params(strategy="localize", step_verifier=NO_X, max_rounds=4), script)
    assert [c.step for c in out.candidates] == ["draft", "local", "global", "local"]
    assert out.candidates[1].text == "still 41"
    assert "(none: the first step fails)" in script.calls[1]["messages"][-1]["content"]
    rounds = out.report()["localize"]["rounds"]
    assert [r["winner"] for r in rounds] == ["draft", "draft"]
    assert out.stop_reason == "max_rounds" and out.chosen.index == 0


def test_localize_with_every_step_passing_rewrites_the_last_step():
    script = Script("Compute 6 * 7.\nIt is 41", "It is 42", "unused")
    out = run(params(strategy="localize", step_verifier=NO_X, max_rounds=2), script)
    # One round left after the draft: only the local rewrite is drawn.
    assert [c.step for c in out.candidates] == ["draft", "local"]
    assert out.candidates[1].text == "Compute 6 * 7.\nIt is 42"
    assert out.report()["localize"]["rounds"][0]["first_failing_step"] == 2
    assert len(script.calls) == 2


def test_localize_scores_steps_with_p_true_by_default():
    prompts = []

    async def next_token(prompt, top):
        prompts.append(prompt)
        p_true = 0.1 if "X" in prompt.split("possibly unfinished:")[1] else 0.9
        return {" A": math.log(p_true), " B": math.log(1 - p_true)}

    script = Script(DRAFT, "6 * 7 = 42\nSo the answer is 42", "42")
    ctx = VerifyContext(QUESTION, Services(next_token=next_token))
    out = run(params(strategy="localize"), script, ctx)
    assert len(prompts) == 2  # scoring stops at the first failing step
    assert prompts[0].endswith(
        "Proposed solution, possibly unfinished:\nCompute 6 * 7.\n"
        "Is every step of the proposed solution so far:\n (A) Correct\n (B) Incorrect\n"
        "The steps so far are:"
    )
    assert out.report()["localize"]["rounds"][0]["step_scores"] == [0.9, 0.1]


# -- aggregate ---------------------------------------------------------------------------------


def test_aggregate_returns_the_majority_answer_whatever_the_verifier_prefers():
    script = Script("40", ["It is 42", "41", "42.0"])
    prefers_41 = {"type": "answer", "reference": 41, "mode": "numeric"}
    p = params(strategy="aggregate", samples=4, max_rounds=4, verifier=prefers_41, temperature=1)
    out = run(p, script)
    assert script.calls[0]["n"] == 1 and script.calls[0]["temperature"] is None
    assert script.calls[1]["n"] == 3 and script.calls[1]["temperature"] == 1
    assert [c.step for c in out.candidates] == ["draft", "sample", "sample", "sample"]
    assert out.chosen.index == 1 and out.chosen.text == "It is 42"
    assert out.stop_reason == "agreement"
    vote = out.report()["aggregate"]
    assert vote["answers"] == [["42", 2], ["40", 1], ["41", 1]]
    assert (vote["majority"], vote["agreement"], vote["escalated"]) == ("42", 0.5, None)


def test_aggregate_escalates_below_tau_with_the_samples_in_context():
    script = Script("40", ["41", "43"], "42")
    p = params(strategy="aggregate", samples=3, max_rounds=4, tau=0.5, escalate="try_again")
    out = run(p, script)
    assert [c.step for c in out.candidates] == ["draft", "sample", "sample", "retry"]
    conversation = script.calls[2]["messages"]
    assert conversation[0]["content"].startswith(QUESTION[0]["content"] + "\n\nEarlier attempts")
    assert "Attempt 1:\n40\n\nAttempt 2:\n41\n\nAttempt 3:\n43" in conversation[0]["content"]
    # try_again continues from the majority sample (a three-way tie: the first seen).
    assert conversation[1:] == [
        {"role": "assistant", "content": "40"},
        {"role": "user", "content": "Incorrect. Please think again."},
    ]
    assert out.chosen.index == 3 and out.stop_reason == "accepted"
    vote = out.report()["aggregate"]
    assert vote["agreement"] == pytest.approx(1 / 3, abs=1e-6) and vote["escalated"] == "try_again"


def test_aggregate_below_tau_without_escalation_returns_the_majority():
    script = Script("41", ["42", "41"])
    out = run(params(strategy="aggregate", tau=0.9), script)
    assert out.chosen.index == 0 and out.stop_reason == "disagreement"


def test_aggregate_escalating_to_best_of_n_samples_the_rounds_left():
    script = Script("40", ["41"], ["42", "39"])
    p = params(strategy="aggregate", samples=2, max_rounds=4, tau=1, escalate="best_of_n")
    out = run(p, script)
    assert (
        script.calls[2]["n"] == 2 and "Attempt 2:\n41" in script.calls[2]["messages"][0]["content"]
    )
    assert [c.step for c in out.candidates] == ["draft", "sample", "sample", "sample"]
    assert out.chosen.index == 2


def test_with_samples_appends_to_the_last_user_turn():
    parts = [{"role": "user", "content": [{"type": "text", "text": "Q"}]}]
    assert with_samples(parts, "N")[0]["content"][-1] == {"type": "text", "text": "\n\nN"}
    assert with_samples([{"role": "system", "content": "S"}], "N")[-1] == {
        "role": "user",
        "content": "N",
    }
    assert parts[0]["content"] == [{"type": "text", "text": "Q"}]  # not modified


# -- P(True) after the model's own samples -----------------------------------------------------


def test_p_true_shows_the_models_own_samples_drawn_once():
    prompts = []

    async def next_token(prompt, top):
        prompts.append(prompt)
        return {" A": math.log(0.3), " B": math.log(0.7)}

    samples = Script(["6 * 7 = 42", "It is   41."])
    ctx = VerifyContext(QUESTION, Services(generate=samples, next_token=next_token))
    verifier = {"type": "p_true", "samples": 2, "samples_temperature": 0.7}
    out = run(params(verifier=verifier, max_rounds=2), Script("41", "42"), ctx)
    assert len(out.candidates) == 2
    assert len(samples.calls) == 1  # drawn once, shown to every verification
    assert samples.calls[0]["messages"] == QUESTION
    assert (samples.calls[0]["n"], samples.calls[0]["temperature"]) == (2, 0.7)
    assert prompts[1] == (
        f"Question: {QUESTION[0]['content']}\nHere are some brainstormed answers:\n"
        "6 * 7 = 42\nIt is 41.\nPossible answer: 42\nIs the possible answer:\n"
        " (A) True\n (B) False\nThe possible answer is:"
    )


def test_p_true_samples_count_against_the_engine_call_budget():
    async def next_token(prompt, top):
        return {" A": 0.0}

    ctx = VerifyContext(QUESTION, Services(generate=Script(["a", "b", "c"]), next_token=next_token))
    verifier = {"type": "p_true", "samples": 3}
    # The draft (1) + three samples (3) exceed 3 engine calls: the verification fails closed.
    out = run(params(verifier=verifier, max_rounds=1, max_engine_calls=3), Script("42"), ctx)
    assert "error" in out.candidates[0].verdict.details


# -- validation --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("refinement", "param"),
    [
        ({"strategy": "aggregate", "samples": 4}, "correction.refinement.samples"),
        ({"strategy": "aggregate", "samples": 1}, "correction.refinement.samples"),
        (
            {"strategy": "aggregate", "samples": 99, "max_rounds": 8},
            "correction.refinement.samples",
        ),
        ({"strategy": "aggregate", "escalate": "try_again"}, "correction.refinement.max_rounds"),
        (
            {"strategy": "aggregate", "escalate": "aggregate", "max_rounds": 4},
            "correction.refinement.escalate",
        ),
        ({"strategy": "aggregate", "tau": 1.5}, "correction.refinement.tau"),
        ({"strategy": "aggregate", "tau": float("nan")}, "correction.refinement.tau"),
        (
            {"strategy": "localize", "step_verifier": {"type": "nope"}},
            "correction.refinement.step_verifier.type",
        ),
        (
            {"strategy": "localize", "step_verifier": "p_true"},
            "correction.refinement.step_verifier",
        ),
        ({"strategy": "localize", "step_split": "words"}, "correction.refinement.step_split"),
        ({"strategy": "localize", "max_steps": 0}, "correction.refinement.max_steps"),
        ({"strategy": "localize", "max_steps": 10**9}, "correction.refinement.max_steps"),
        ({"prompts": {"localize": "{prefix:>99999}"}}, "correction.refinement.prompts.localize"),
        ({"prompts": {"samples": "{question}"}}, "correction.refinement.prompts.samples"),
        ({"verifier": {"type": "p_true", "samples": 9}}, "correction.refinement.verifier.samples"),
        (
            {"verifier": {"type": "p_true", "samples_prompt": "{answer!r}"}},
            "correction.refinement.verifier.samples_prompt",
        ),
    ],
)
def test_hostile_parameters_are_refused_naming_the_field(refinement, param):
    refinement.setdefault("verifier", NUMERIC)
    with pytest.raises(CorrectionError) as err:
        parse_correction({"refinement": refinement})
    assert err.value.param == param
