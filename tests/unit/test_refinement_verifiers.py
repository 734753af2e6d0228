"""Pure verifiers, combinations and verifier specs (no engine)."""

import asyncio
import math

import pytest

from decoding.correction import parse_correction
from decoding.params import CorrectionError, NestedFieldError
from decoding.refinement import (
    BUILTIN_VERIFIER_TYPES,
    Services,
    VerifierParams,
    VerifierType,
    VerifyContext,
    build_verifier,
    parse_verifier,
)
from decoding.refinement.generation import Generation
from decoding.refinement.text_verifiers import extract_json, normalise
from server.refinement.verifiers import SERVER_VERIFIER_TYPES

CTX = VerifyContext([{"role": "user", "content": "What is 6 * 7?"}])


def verdict(spec, text, ctx=CTX):
    return asyncio.run(build_verifier(parse_verifier(spec)).verify(text, ctx))


def test_regex_search_and_full_match():
    assert verdict({"type": "regex", "pattern": r"\d+"}, "it is 42").accepted
    full = {"type": "regex", "pattern": r"\d+", "full_match": True}
    assert verdict(full, " 42\n").accepted
    rejected = verdict(full, "it is 42")
    assert not rejected.accepted and rejected.score == 0 and "pattern" in rejected.feedback


def test_json_schema_scores_valid_invalid_and_missing_json():
    spec = {
        "type": "json_schema",
        "schema": {
            "type": "object",
            "required": ["name"],
            "properties": {"name": {"type": "string"}},
        },
    }
    assert verdict(spec, 'Here you go:\n```json\n{"name": "Ada"}\n```').accepted
    wrong = verdict(spec, '{"name": 3}')
    assert (wrong.accepted, wrong.score) == (False, 0.5) and "name" in wrong.feedback
    none = verdict(spec, "no json here")
    assert (none.accepted, none.score) == (False, 0.0)


def test_extract_json_prefers_whole_then_fence_then_first_span():
    assert extract_json(' {"a": 1} ') == {"a": 1}
    assert extract_json('text {"a": [1, 2]} trailing') == {"a": [1, 2]}
    with pytest.raises(ValueError):
        extract_json("nothing {broken")


@pytest.mark.parametrize(
    ("spec", "text", "ok"),
    [
        ({"reference": "Paris"}, "  paris. ", True),
        ({"reference": "Paris"}, "Lyon", False),
        ({"reference": 42, "mode": "numeric"}, "6 * 7 = 42", True),
        ({"reference": "1,000", "mode": "numeric"}, "The total is 1000.0", True),
        ({"reference": 0.3, "mode": "numeric", "abs_tol": 0.01}, "about 0.305", True),
        ({"reference": 42, "mode": "numeric"}, "41 or 43", False),
        ({"reference": 42, "mode": "numeric"}, "no digits", False),
        ({"reference": "42", "extract": r"The answer is: (.*?)$"}, "x\nThe answer is: 42", True),
    ],
)
def test_answer_exact_and_numeric(spec, text, ok):
    result = verdict({"type": "answer", **spec}, text)
    assert result.accepted is ok
    assert result.score == (1.0 if ok else 0.0)


@pytest.mark.parametrize(
    ("spec", "text"),
    [
        ({"reference": 4817, "mode": "numeric"}, "It is 4816."),
        ({"reference": 4817, "mode": "numeric"}, "no number"),
        ({"reference": "Canberra"}, "Sydney"),
        ({"reference": "Canberra", "extract": r"Answer: (\w+)"}, "Answer: Sydney"),
    ],
)
def test_answer_feedback_never_reveals_the_reference(spec, text):
    # The feedback goes back to the model with "feedback": true; the reference must not.
    result = verdict({"type": "answer", **spec}, text)
    assert not result.accepted and result.feedback
    assert str(spec["reference"]).lower() not in result.feedback.lower()


def test_normalise():
    assert normalise("  The  ANSWER!\n") == "the answer"


def test_all_and_any_combine_verdicts():
    digits = {"type": "regex", "pattern": r"^\d+$", "full_match": True}
    forty_two = {"type": "answer", "reference": 42, "mode": "numeric"}
    both = verdict({"all": [digits, forty_two]}, "41")
    assert not both.accepted and both.score == 0.5 and len(both.parts) == 2
    assert "incorrect" in both.feedback
    either = verdict({"any": [digits, forty_two]}, "41")
    assert either.accepted and either.score == 1.0
    nested = verdict({"all": [digits, {"any": [forty_two, digits]}]}, "42")
    assert nested.accepted and [leaf.verifier for leaf in nested.leaves()] == [
        "regex",
        "answer",
        "regex",
    ]
    assert build_verifier(parse_verifier({"all": [digits, forty_two]})).exact


@pytest.mark.parametrize(
    ("verifier", "param"),
    [
        ({"type": "nope"}, "correction.refinement.verifier.type"),
        ({"pattern": "x"}, "correction.refinement.verifier.type"),
        ("regex", "correction.refinement.verifier"),
        ({"type": "json_schema", "schema": {"type": 5}}, "correction.refinement.verifier.schema"),
        ({"type": "regex", "pattern": "("}, "correction.refinement.verifier.pattern"),
        ({"type": "regex", "pattern": "x", "extra": 1}, "correction.refinement.verifier.extra"),
        ({"all": []}, "correction.refinement.verifier.all"),
        ({"any": [{"type": "x"}]}, "correction.refinement.verifier.any.0.type"),
        (
            {"type": "answer", "reference": "x", "mode": "numeric"},
            "correction.refinement.verifier.reference",
        ),
        ({"type": "judge", "prompt": "{nope}"}, "correction.refinement.verifier.prompt"),
    ],
)
def test_bad_verifier_specs_name_the_field(verifier, param):
    with pytest.raises(CorrectionError) as err:
        parse_correction({"refinement": {"verifier": verifier}})
    assert err.value.param == param, err.value.message


def test_max_rounds_cap_comes_from_the_server():
    spec = {"refinement": {"verifier": {"type": "regex", "pattern": "x"}, "max_rounds": 6}}
    assert parse_correction(spec, context={"refinement_max_rounds": 6})
    with pytest.raises(CorrectionError) as err:
        parse_correction(spec, context={"refinement_max_rounds": 5})
    assert err.value.param == "correction.refinement.max_rounds"
    assert "at most 5" in err.value.message


def test_truth_must_be_exact_and_urls_must_be_allowed():
    base = {"verifier": {"type": "regex", "pattern": "x"}}
    with pytest.raises(CorrectionError) as err:
        parse_correction({"refinement": {**base, "truth": {"type": "p_true"}}})
    assert err.value.param == "correction.refinement.truth"
    judge = {"type": "judge", "url": "http://10.0.0.1/v1"}
    with pytest.raises(CorrectionError) as err:
        parse_correction(
            {"refinement": {"verifier": judge}},
            context={"verifier_url_prefixes": ["http://127.0.0.1:"]},
        )
    assert err.value.param == "correction.refinement.verifier.url"
    assert parse_correction(
        {"refinement": {"verifier": {**judge, "url": "http://127.0.0.1:9/v1"}}},
        context={"verifier_url_prefixes": ["http://127.0.0.1:"]},
    )


def test_bad_prompt_template_names_the_prompt():
    with pytest.raises(CorrectionError) as err:
        parse_correction(
            {
                "refinement": {
                    "verifier": {"type": "regex", "pattern": "x"},
                    "prompts": {"refine": "fix {oops}"},
                }
            }
        )
    assert err.value.param == "correction.refinement.prompts.refine"


def test_p_true_reads_the_next_token_distribution():
    seen = {}

    async def next_token(prompt, top):
        seen["prompt"], seen["top"] = prompt, top
        return {" A": math.log(0.6), " B": math.log(0.2), " C": math.log(0.1)}

    ctx = VerifyContext(CTX.messages, Services(next_token=next_token))
    result = verdict({"type": "p_true"}, "42", ctx)
    assert result.accepted and result.score == pytest.approx(0.75)
    assert "Question: What is 6 * 7?\nProposed answer: 42\n" in seen["prompt"]
    assert seen["prompt"].endswith("The proposed answer is:")
    strict = verdict({"type": "p_true", "threshold": 0.8}, "42", ctx)
    assert not strict.accepted


def test_judge_on_the_engine_and_on_a_remote_url():
    replies = iter(["INCORRECT: 6 * 7 is 42.", "Correct."])
    calls = []

    async def generate(messages, *, n=1, max_tokens=None, temperature=None):
        calls.append((messages, max_tokens, temperature))
        return [Generation(next(replies), 3)]

    ctx = VerifyContext(
        CTX.messages,
        Services(generate=generate, remote=lambda url, model: generate),
    )
    first = verdict({"type": "judge"}, "41", ctx)
    assert not first.accepted and "6 * 7 is 42" in first.feedback
    second = verdict({"type": "judge", "url": "http://127.0.0.1:1/v1"}, "42", ctx)
    assert second.accepted
    assert "Response:\n41" in calls[0][0][0]["content"] and calls[0][2] == 0.0


def test_the_registry_is_explicit():
    # decoding's built-ins are the pure types; a server adds the outside-world ones.
    assert BUILTIN_VERIFIER_TYPES.names() == ("answer", "json_schema", "judge", "p_true", "regex")
    assert set(SERVER_VERIFIER_TYPES) == {*BUILTIN_VERIFIER_TYPES, "python_tests", "webhook"}
    with pytest.raises(NestedFieldError, match="unknown verifier type 'webhook'"):
        parse_verifier({"type": "webhook", "url": "http://127.0.0.1:9/"})
    with pytest.raises(ValueError, match="two verifier types are named 'regex'"):
        BUILTIN_VERIFIER_TYPES + [BUILTIN_VERIFIER_TYPES["regex"]]


def test_a_type_is_named_by_its_parameters_type_literal():
    class Untyped(VerifierParams):
        pass

    with pytest.raises(ValueError, match="Literal of one name"):
        _ = VerifierType(Untyped, lambda params: None).name
