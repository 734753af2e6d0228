"""The refinement loop and its strategies, driven by a scripted fake ``generate``."""

import asyncio

import pytest

from decoding.correction import parse_correction
from decoding.refinement import STRATEGIES, Generation, NoCandidate, refine
from decoding.refinement.strategies import STRATEGIES_BY_NAME, parse_constraints

QUESTION = [{"role": "user", "content": "What is 6 * 7? Reply with the number."}]
NUMERIC = {"type": "answer", "reference": 42, "mode": "numeric"}


class Script:
    """A fake engine: replies in order (each entry a string, or a list for n > 1), records
    every call."""

    def __init__(self, *replies, tokens=5):
        self.replies = list(replies)
        self.calls = []
        self.tokens = tokens

    async def __call__(self, messages, *, n=1, max_tokens=None, temperature=None):
        self.calls.append(
            {
                "messages": list(messages),
                "n": n,
                "max_tokens": max_tokens,
                "temperature": temperature,
            }
        )
        reply = self.replies.pop(0)
        texts = reply if isinstance(reply, list) else [reply]
        assert len(texts) == n
        return [Generation(text, self.tokens) for text in texts]


def params(**refinement):
    refinement.setdefault("verifier", NUMERIC)
    return parse_correction({"refinement": refinement}).refinement


def run(p, script, **kw):
    return asyncio.run(refine(p, QUESTION, script, **kw))


def test_accepted_draft_ends_the_loop_after_one_round():
    script = Script("42")
    out = run(params(), script)
    assert (len(out.candidates), out.chosen.index, out.stop_reason) == (1, 0, "accepted")
    assert len(script.calls) == 1 and out.tokens == 5
    assert out.truth.flip is None


def test_try_again_appends_the_feedback_turn_and_flips_to_correct():
    script = Script("41", "40", "42")
    out = run(params(max_rounds=3, temperature=0.7), script)
    assert [c.step for c in out.candidates] == ["draft", "retry", "retry"]
    assert out.chosen.index == 2 and out.stop_reason == "accepted"
    last = script.calls[2]["messages"]
    assert [m["role"] for m in last] == ["user", "assistant", "user", "assistant", "user"]
    assert last[2]["content"] == "Incorrect. Please think again."
    assert script.calls[0]["temperature"] is None and script.calls[1]["temperature"] == 0.7
    assert out.truth.flip == "incorrect_to_correct"
    report = out.report()
    assert report["rounds"] == 3 and report["truth"]["flip"] == "incorrect_to_correct"
    assert [c["verdict"]["accepted"] for c in report["candidates"]] == [False, False, True]


def test_try_again_stops_on_a_repeated_answer():
    script = Script("41", "I still think 41.", "unused")
    out = run(params(max_rounds=5), script)
    assert out.stop_reason == "repeated_answer" and len(out.candidates) == 2
    assert out.chosen.index == 0  # ties go to the draft


def test_try_again_with_verifier_feedback():
    script = Script("41", "42")
    run(params(feedback=True), script)
    assert script.calls[1]["messages"][-1]["content"] == (
        "Incorrect. Please think again.\nThe answer is incorrect."
    )


def test_max_rounds_bounds_the_candidates():
    script = Script("1", "2", "3", "4")
    out = run(params(max_rounds=3), script)
    assert len(out.candidates) == 3 and out.stop_reason == "max_rounds"
    assert out.chosen.index == 0 and out.truth.flip is None


def test_selection_never_scores_below_the_draft():
    schema = {
        "type": "json_schema",
        "schema": {"type": "object", "required": ["a"]},
    }
    # Draft: JSON but invalid (0.5); then no JSON (0.0): the draft stays chosen.
    script = Script('{"b": 1}', "sorry", "still sorry")
    out = run(params(verifier=schema, max_rounds=3), script)
    assert [c.verdict.score for c in out.candidates] == [0.5, 0.0, 0.0]
    assert out.chosen.index == 0


def test_token_budget_caps_each_call_and_stops_the_loop():
    script = Script("41", "40", "42", tokens=6)
    out = run(params(max_rounds=5, max_total_tokens=10), script)
    assert script.calls[0]["max_tokens"] == 10 and script.calls[1]["max_tokens"] == 4
    assert out.stop_reason == "token_budget" and len(out.candidates) == 2


def test_time_budget_stops_before_the_next_round():
    now = [0.0]
    script = Script("41", "40", "42")

    async def one_second_each(messages, **kw):
        now[0] += 1.0
        return await script(messages, **kw)

    out = run(params(max_rounds=5, max_seconds=1.5), one_second_each, clock=lambda: now[0])
    assert out.stop_reason == "time_budget" and len(out.candidates) == 2


def test_time_budget_cancels_a_slow_generation():
    async def slow(messages, **kw):
        await asyncio.sleep(10)

    with pytest.raises(NoCandidate):
        run(params(max_seconds=0.05), slow)


def test_self_refine_critiques_then_rewrites_and_stops_when_the_critic_is_satisfied():
    script = Script("41", "6 * 7 is 42, not 41.", "42")
    out = run(params(strategy="self_refine"), script)
    assert [c.step for c in out.candidates] == ["draft", "refine"] and out.chosen.index == 1
    assert "Check your previous answer" in script.calls[1]["messages"][-1]["content"]
    assert "6 * 7 is 42, not 41." in script.calls[2]["messages"][-1]["content"]
    satisfied = Script("41", "I reviewed it and it is correct.")
    out = run(params(strategy="self_refine"), satisfied)
    assert out.stop_reason == "critic_satisfied" and len(out.candidates) == 1


def test_best_of_n_draws_the_draft_and_samples_and_reranks():
    script = Script("41", ["40", "42", "42.0"])
    out = run(params(strategy="best_of_n", max_rounds=4, temperature=1.0), script)
    assert script.calls[0]["n"] == 1 and script.calls[0]["temperature"] is None
    assert script.calls[1]["n"] == 3 and script.calls[1]["temperature"] == 1.0
    assert [c.step for c in out.candidates] == ["draft", "sample", "sample", "sample"]
    assert out.chosen.index == 2 and out.stop_reason == "accepted"
    assert out.truth.flip == "incorrect_to_correct"


def test_decompose_checks_each_constraint_and_refines_with_the_failed_ones():
    lower = {"type": "regex", "pattern": r"^[a-z ]+$", "full_match": True}
    script = Script(
        "Hello World",  # draft
        "1. Use lowercase only\n2. Greet the world\n- Greet the world",  # constraints
        "no",  # lowercase? (checked concurrently, in order)
        "yes",  # greets?
        "hello world",  # rewrite
    )
    out = run(params(strategy="decompose", verifier=lower), script)
    assert out.chosen.index == 1 and out.stop_reason == "accepted"
    check_prompts = [c["messages"][0]["content"] for c in script.calls[2:4]]
    assert "Requirement: Use lowercase only" in check_prompts[0]
    rewrite = script.calls[4]["messages"][-1]["content"]
    assert "- Use lowercase only" in rewrite and "Greet the world" not in rewrite


def test_decompose_appends_the_verifiers_feedback_only_when_asked():
    # Issue 15: the ``feedback`` flag governs every strategy, decompose included.
    lower = {"type": "regex", "pattern": r"^[a-z ]+$", "full_match": True}

    def script():
        return Script("Hello World", "Use lowercase only", "no", "hello world")

    without = script()
    run(params(strategy="decompose", verifier=lower), without)
    rewrite = without.calls[3]["messages"][-1]["content"]
    assert "- Use lowercase only" in rewrite and "the pattern" not in rewrite
    with_feedback = script()
    run(params(strategy="decompose", verifier=lower, feedback=True), with_feedback)
    rewrite = with_feedback.calls[3]["messages"][-1]["content"]
    assert "- Use lowercase only" in rewrite and "the pattern" in rewrite


def test_concurrent_checks_share_the_token_budget_instead_of_each_taking_it_all():
    # decompose checks its constraints concurrently; each check used to be granted every
    # token left, so together they overran max_total_tokens (the refinement eval saw it).
    script = Script("Hello World", "1. a\n2. b\n3. c", "no", "no", "no", "unused")

    async def spend_all_granted(messages, *, n=1, max_tokens=None, temperature=None):
        await asyncio.sleep(0)  # let the concurrent checks interleave
        out = await script(messages, n=n, max_tokens=max_tokens, temperature=temperature)
        return [Generation(g.text, min(max_tokens, 10)) for g in out]

    lower = {"type": "regex", "pattern": r"^[a-z ]+$", "full_match": True}
    out = run(params(strategy="decompose", verifier=lower, max_total_tokens=26), spend_all_granted)
    checks = [c["max_tokens"] for c in script.calls[2:]]
    assert checks == [4, 2]  # the third check found nothing left and stopped the run
    assert out.tokens == 26 and out.stop_reason == "token_budget"


def test_parse_constraints():
    assert parse_constraints("1) a\n\n* b\n(3) A\n- c", 2) == ["a", "b"]


def test_truth_verifier_counts_flips_for_opinion_verifiers():
    script = Script("41", "42")
    judge = {"type": "regex", "pattern": "^4"}  # accepts the wrong draft
    out = run(params(verifier=judge, truth=NUMERIC), script)
    assert out.truth.draft is False and out.truth.chosen is False
    assert out.truth.flip is None and len(out.candidates) == 1


def test_a_failing_verifier_rejects_without_failing_the_request():
    script = Script("41", "42")
    out = run(params(verifier={"type": "p_true"}, max_rounds=2), script)
    assert "error" in out.candidates[0].verdict.details
    assert out.truth is None and len(out.candidates) == 2


def test_on_candidate_sees_every_round_in_order():
    seen = []

    async def on_candidate(candidate):
        seen.append(candidate.text)

    run(params(), Script("41", "42"), on_candidate=on_candidate)
    assert seen == ["41", "42"]


def test_every_strategy_name_has_its_strategy():
    # The names are defined once (params.StrategyName); each names exactly one strategy.
    assert set(STRATEGIES_BY_NAME) == set(STRATEGIES)
    assert all(STRATEGIES_BY_NAME[name].name == name for name in STRATEGIES)


@pytest.mark.parametrize("strategy", ["best_of_n", "aggregate"])
def test_a_draft_drawn_beside_samples_reserves_only_what_one_sequence_can_take(strategy):
    # best_of_n and aggregate request the draft and the samples together; the draft, asked
    # without max_tokens, used to reserve the whole budget, so the samples were refused and
    # the strategy returned the draft alone (the refinement eval's runs[2] saw it).
    def engine():
        script = Script("41", ["42", "43"])

        async def capped(messages, *, n=1, max_tokens=None, temperature=None):
            await asyncio.sleep(0)  # let the two calls interleave
            out = await script(messages, n=n, max_tokens=max_tokens, temperature=temperature)
            return [Generation(g.text, min(max_tokens, 12)) for g in out]

        return script, capped

    p = params(strategy=strategy, max_rounds=3, max_total_tokens=36, temperature=0.8)
    script, capped = engine()
    out = run(p, capped, sequence_tokens=12)
    assert [c["max_tokens"] for c in script.calls] == [12, 12]
    assert len(out.candidates) == 3 and out.tokens == 36
    # Without the request's cap the loop cannot know what the draft will take: as before.
    script, capped = engine()
    assert len(run(p, capped).candidates) == 1
