"""Corrections x vLLM features, against the real engine through the OpenAI SDK (README,
"Composition rules"): every cell asserts that the output obeys the feature AND shows the
correction's effect.

Rows: proxy-tuning, the copilot (its checkpoint fuses in ``"probs"`` space) and an extra
correction (tests/integration/delayed_bias/) on the shared tiny server, whose engine reports
processed logprobs (``[engine] logprobs_mode``); guarded unlearning on the session SmolLM2 server.
Columns: structured outputs (json_schema, regex, choice), tools (a named tool_choice, which vLLM
decodes under a JSON schema), allowed_token_ids, logit_bias, n > 1, beam search, LoRA.

The correction's observable effect: the extra correction raises one token's logit by 100, so the
option the plain request did not pick wins wherever the feature allows the boosted token;
proxy-tuning and the copilot change the distribution the engine samples from, which the
processed logprobs show (they differ from the plain request's under the same feature);
unlearning never lets the forget set's answer ("Paris") through, where the plain request says it.
"""

from __future__ import annotations

import json
import math
import re

import openai
import pytest
from openai import OpenAI

from ..conftest import SERVED_MODEL
from .tiny import LORA_MODEL

pytestmark = pytest.mark.engine

#: Tokens of the tiny model's tokenizer (SmolLM2's): "yes", "no", '"', EOS.
YES, NO, QUOTE, EOS = 10407, 4607, 18, 2
EOS_TEXT = "<|im_end|>"
OPTIONS = {"yes": YES, "no": NO}
TINY_CORRECTIONS = ("proxy_tuning", "copilot", "extra")
FEATURES = (
    "json_schema",
    "regex",
    "choice",
    "tools",
    "allowed_token_ids",
    "logit_bias",
    "n",
    "beam_search",
    "lora",
)
#: Unlearning's server (the session's SmolLM2) serves no adapter; the tiny server serves
#: ``tiny.LORA_MODEL`` (tests/integration/test_vllm_routes.py checks the corrections on it
#: against a merged reference, proxy-tuning included).
LORA_REASON = (
    "the session server (SmolLM2, the only one with forget sets) serves no LoRA adapter; the "
    "unlearning filters act on the served model's logits whatever weights produced them"
)
PICK_TOOL = {
    "type": "function",
    "function": {
        "name": "pick",
        "description": "Pick an answer.",
        "parameters": {
            "type": "object",
            "properties": {"answer": {"type": "string", "enum": ["yes", "no"]}},
            "required": ["answer"],
            "additionalProperties": False,
        },
    },
}


@pytest.fixture(scope="module")
def tiny(tiny_server):
    with OpenAI(base_url=f"{tiny_server.base_url}/v1", api_key="unused", max_retries=0) as c:
        yield c


def correction_of(name: str, boost: int | None = None, from_step: int = 0) -> dict:
    if name == "proxy_tuning":
        return {"proxy_tuning": {"expert": "expert", "anti_expert": "anti", "alpha": 1.0}}
    if name == "copilot":
        # In "probs" space, lambda 1000 pushes the tokens of its training data (tiny.py) up by
        # hundreds of probability units: under a mask, none of them may escape it.
        return {"copilot": {"name": "fix", "lambda": 1000.0}}
    assert boost is not None
    return {"delayed_bias": {"token": boost, "bias": 100.0, "from_step": from_step}}


def feature_body(feature: str) -> dict:
    """The request fields that turn the feature on (an answer of "yes" or "no" in each)."""
    if feature == "json_schema":
        schema = {"type": "string", "enum": ["yes", "no"]}
        return {
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "answer", "schema": schema},
            }
        }
    if feature == "regex":
        return {"structured_outputs": {"regex": "(yes|no)"}}
    if feature == "choice":
        return {"structured_outputs": {"choice": ["yes", "no"]}}
    if feature == "tools":
        return {
            "tools": [PICK_TOOL],
            "tool_choice": {"type": "function", "function": {"name": "pick"}},
        }
    if feature == "allowed_token_ids":
        return {"allowed_token_ids": [YES, NO, EOS]}
    raise AssertionError(feature)


def answer_of(feature: str, message) -> str:
    """The answer the feature constrains, checking the feature's own form on the way."""
    if feature == "json_schema":
        return json.loads(message.content)
    if feature == "tools":
        (call,) = message.tool_calls
        assert call.function.name == "pick"
        arguments = json.loads(call.function.arguments)
        assert set(arguments) == {"answer"}
        return arguments["answer"]
    if feature == "allowed_token_ids":
        return message.content
    assert re.fullmatch("yes|no", message.content), message.content
    return message.content


def chat(client: OpenAI, body: dict, correction: dict | None = None, **extra):
    fields = ("response_format", "tools", "tool_choice")
    extra_body = {k: v for k, v in body.items() if k not in fields}
    extra_body["return_token_ids"] = True
    if correction is not None:
        extra_body["correction"] = correction
    kwargs = {k: body[k] for k in fields if k in body}
    return client.chat.completions.create(
        model=extra.pop("model", "base"),
        messages=[{"role": "user", "content": "Answer yes or no."}],
        max_tokens=extra.pop("max_tokens", 16),
        temperature=extra.pop("temperature", 0),
        logprobs=True,
        top_logprobs=5,
        extra_body=extra_body,
        **kwargs,
        **extra,
    )


def steps_of(response) -> list[dict[str, float]]:
    """Per generated token, the processed (corrected) logprobs of its top candidates and the
    token itself (under the key ``None``)."""
    return [
        {None: step.token, **{t.token: t.logprob for t in step.top_logprobs}}
        for step in response.choices[0].logprobs.content
    ]


def assert_distribution_changed(plain, corrected) -> None:
    """Some step of the same prefix has other logprobs, or the greedy choice differs."""
    for a, b in zip(steps_of(plain), steps_of(corrected), strict=False):
        if a[None] != b[None] or set(a) != set(b):
            return
        if any(not math.isclose(a[t], b[t], abs_tol=1e-4) for t in a if t is not None):
            return
    raise AssertionError(
        f"unchanged: {steps_of(plain)} {steps_of(corrected)} {corrected.model_extra}"
    )


# -- the tiny server: proxy-tuning, the copilot, an extra correction ------------------------


@pytest.mark.parametrize("feature", FEATURES)
@pytest.mark.parametrize("name", TINY_CORRECTIONS)
def test_matrix(tiny, name, feature):
    if feature == "lora":
        return check_lora(tiny, name)
    if feature == "beam_search":
        assert_beam_search_refused(tiny, "base", correction_of(name, boost=NO))
        return
    if feature == "logit_bias":
        return check_logit_bias(tiny, name)
    if feature == "n":
        return check_n(tiny, name)
    body = feature_body(feature)
    plain = chat(tiny, body)
    assert plain.choices[0].finish_reason in ("stop", "tool_calls"), plain
    if feature == "allowed_token_ids":
        check_allowed_token_ids(tiny, name, plain)
        return
    said = answer_of(feature, plain.choices[0].message)
    assert said in OPTIONS, said
    other = "no" if said == "yes" else "yes"
    corrected = chat(tiny, body, correction_of(name, boost=OPTIONS[other]))
    report = corrected.model_extra["correction"]
    assert corrected.choices[0].finish_reason in ("stop", "tool_calls"), corrected
    answer = answer_of(feature, corrected.choices[0].message)  # the feature holds
    assert answer in OPTIONS
    assert "forced_stops" not in report
    if name == "extra":  # the boosted option wins wherever the grammar allows its token
        assert answer == other, (said, answer)
        assert report["delayed_bias"]["boosted"] == corrected.usage.completion_tokens
    elif name == "copilot":
        assert_copilot_applied(report, corrected)
    else:
        assert_distribution_changed(plain, corrected)


def assert_copilot_applied(report: dict, response) -> None:
    """The copilot rectifies every step, strongly (``|lambda f|`` up to hundreds); its
    rectification lies on its training data's tokens, which the feature masks here, so the
    masked logprobs barely move (the unmasked logit_bias cell shows the distribution change)."""
    assert report["copilot"]["steps"] == response.usage.completion_tokens
    assert report["copilot"]["max_abs_rectification"] > 100


def check_lora(client: OpenAI, name: str) -> None:
    """The adapter is a model id; the correction applies to its logits (under a grammar)."""
    body = feature_body("choice")
    plain = chat(client, body, model=LORA_MODEL)
    said = plain.choices[0].message.content
    assert said in OPTIONS
    other = "no" if said == "yes" else "yes"
    corrected = chat(client, body, correction_of(name, boost=OPTIONS[other]), model=LORA_MODEL)
    assert corrected.model == LORA_MODEL
    assert corrected.choices[0].message.content in OPTIONS
    if name == "extra":
        assert corrected.choices[0].message.content == other
    elif name == "copilot":
        assert_copilot_applied(corrected.model_extra["correction"], corrected)
    else:
        assert_distribution_changed(plain, corrected)


def check_allowed_token_ids(client: OpenAI, name: str, plain) -> None:
    body = feature_body("allowed_token_ids")
    allowed = set(body["allowed_token_ids"])
    # The extra correction boosts a token the request does not allow: it must stay masked.
    corrected = chat(client, body, correction_of(name, boost=QUOTE), max_tokens=6)
    assert set(corrected.choices[0].model_extra["token_ids"]) <= allowed
    names = {"yes", "no", EOS_TEXT}
    for step in corrected.choices[0].logprobs.content:  # only allowed tokens have mass
        for candidate in step.top_logprobs:
            if candidate.logprob > -1000:  # vLLM writes -inf as -9999.0
                assert candidate.token in names, step
    if name == "extra":
        # And an allowed token it boosts wins every step.
        other = "yes" if plain.choices[0].logprobs.content[0].token == "no" else "no"
        boosted = chat(client, body, correction_of(name, boost=OPTIONS[other]), max_tokens=6)
        assert [t.token for t in boosted.choices[0].logprobs.content] == [other] * 6
    elif name == "copilot":
        assert_copilot_applied(corrected.model_extra["correction"], corrected)
    else:
        assert_distribution_changed(plain, corrected)


def check_logit_bias(client: OpenAI, name: str) -> None:
    """vLLM adds logit_bias before the corrections run (its sampler's built-in processors come
    first): the correction sees the biased logits, and adds to them."""
    bias = {str(YES): 30}
    plain = chat(client, {}, logit_bias=bias, max_tokens=4)
    assert [t.token for t in plain.choices[0].logprobs.content] == ["yes"] * 4  # the bias won
    if name == "extra":
        corrected = chat(client, {}, correction_of(name, boost=NO), logit_bias=bias, max_tokens=4)
        # +100 by the correction beats +30 by logit_bias on any random-model logits.
        assert [t.token for t in corrected.choices[0].logprobs.content] == ["no"] * 4
    else:
        corrected = chat(client, {}, correction_of(name), logit_bias=bias, max_tokens=4)
        assert_distribution_changed(plain, corrected)


def check_n(client: OpenAI, name: str) -> None:
    body = feature_body("choice")
    kwargs = {"n": 3, "temperature": 1.0, "seed": 7, "max_tokens": 4}
    if name == "extra":
        corrected = chat(client, body, correction_of(name, boost=NO), **kwargs)
        assert [c.message.content for c in corrected.choices] == ["no"] * 3
        assert corrected.model_extra["correction"]["delayed_bias"]["boosted"] == (
            corrected.usage.completion_tokens
        )
    else:
        plain = chat(client, body, **kwargs)
        corrected = chat(client, body, correction_of(name), **kwargs)
        assert sorted(c.index for c in corrected.choices) == [0, 1, 2]
        assert all(c.message.content in OPTIONS for c in corrected.choices)
        if name == "copilot":
            assert_copilot_applied(corrected.model_extra["correction"], corrected)
        else:
            assert_distribution_changed(plain, corrected)


def assert_beam_search_refused(client: OpenAI, model: str, correction: dict) -> None:
    """vLLM's beam search drops the corrections on its way to the engine: refused, naming it."""
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(
            model=model,
            prompt="Answer yes or no.",
            max_tokens=4,
            n=2,
            temperature=0,
            extra_body={"use_beam_search": True, "correction": correction},
        )
    assert err.value.body["param"] == "use_beam_search"
    assert err.value.body["code"] == "unsupported_combination"


def test_processed_logprobs_report_the_corrected_distribution(tiny):
    """``[engine] logprobs_mode = "processed_logprobs"``: logprobs are those of the corrected
    distribution; the default (raw) reports the model's, before corrections."""
    plain = chat(tiny, {}, max_tokens=3)
    corrected = chat(tiny, {}, correction_of("extra", boost=NO), max_tokens=3)
    steps = corrected.choices[0].logprobs.content
    assert [t.token for t in steps] == ["no"] * 3
    assert all(t.logprob > -1e-3 for t in steps)  # +100: all the mass on "no"
    assert plain.choices[0].logprobs.content[0].logprob < -1e-3  # the random model is unsure


# -- the session server: guarded unlearning on SmolLM2 ---------------------------------------

UNLEARNING = {"unlearning": {"forget_set": "capitals"}}
QUESTION = "What is the capital of France? Answer with the city's name only."
#: SmolLM2's "Paris", " Paris", " Lyon".
PARIS, SPACE_PARIS, SPACE_LYON = 38634, 7042, 38034
CITY_TOOL = {
    "type": "function",
    "function": {
        "name": "answer",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "enum": ["Paris", "Lyon"]}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}
CITY_FEATURES = {
    "json_schema": {
        "response_format": {
            "type": "json_schema",
            "json_schema": {
                "name": "city",
                "schema": {"type": "string", "enum": ["Paris", "Lyon"]},
            },
        }
    },
    "regex": {"structured_outputs": {"regex": "(Paris|Lyon)"}},
    "choice": {"structured_outputs": {"choice": ["Paris", "Lyon"]}},
    "tools": {
        "tools": [CITY_TOOL],
        "tool_choice": {"type": "function", "function": {"name": "answer"}},
    },
    "allowed_token_ids": {"allowed_token_ids": [PARIS, SPACE_PARIS, SPACE_LYON, EOS]},
    "logit_bias": {"logit_bias": {str(PARIS): 20, str(SPACE_PARIS): 20}},
}


def ask(client: OpenAI, body: dict, correction: dict | None = None, **extra):
    fields = ("response_format", "tools", "tool_choice", "logit_bias")
    extra_body = {k: v for k, v in body.items() if k not in fields}
    extra_body["return_token_ids"] = True
    if correction is not None:
        extra_body["correction"] = correction
    return client.chat.completions.create(
        model=SERVED_MODEL,
        messages=[{"role": "user", "content": QUESTION}],
        max_tokens=extra.pop("max_tokens", 12),
        temperature=extra.pop("temperature", 0),
        extra_body=extra_body,
        **{k: body[k] for k in fields if k in body},
        **extra,
    )


def city_of(feature: str, message) -> str:
    if feature == "json_schema":
        return json.loads(message.content)
    if feature == "tools":
        (call,) = message.tool_calls
        return json.loads(call.function.arguments)["city"]
    return message.content


@pytest.mark.parametrize("feature", FEATURES)
def test_matrix_unlearning(client, feature):
    if feature == "lora":
        pytest.skip(LORA_REASON)
    if feature == "beam_search":
        assert_beam_search_refused(client, SERVED_MODEL, UNLEARNING)
        return
    if feature == "n":
        body, kwargs = CITY_FEATURES["choice"], {"n": 2, "temperature": 1.0, "seed": 3}
    else:
        body, kwargs = CITY_FEATURES[feature], {}
    plain = ask(client, body, **kwargs)
    said = [city_of(feature, c.message) for c in plain.choices]
    assert any("Paris" in s for s in said), said  # the fact the forget set withholds
    filtered = ask(client, body, UNLEARNING, **kwargs)
    assert filtered.model_extra["correction"]["unlearning"]["gate"]["decision"] == "filter"
    for choice in filtered.choices:
        answer = city_of(feature, choice.message)
        assert "paris" not in answer.lower(), answer  # the correction holds
        if feature in ("json_schema", "regex", "choice", "tools", "n"):
            assert answer == "Lyon"  # the feature holds: the grammar's other option
        if feature == "allowed_token_ids":
            assert set(choice.model_extra["token_ids"]) <= {PARIS, SPACE_PARIS, SPACE_LYON, EOS}


def test_unlearning_exhausting_allowed_token_ids_ends_with_a_forced_stop(client):
    """Every allowed token spells the withheld answer: the row ends (EOS forced, finish_reason
    "stop") with nothing said, and the report counts the forced stop."""
    body = {"allowed_token_ids": [PARIS, SPACE_PARIS]}
    plain = ask(client, body, max_tokens=2)
    assert "Paris" in plain.choices[0].message.content
    filtered = ask(client, body, UNLEARNING, max_tokens=2)
    choice = filtered.choices[0]
    assert choice.finish_reason == "stop" and choice.message.content == ""
    assert filtered.model_extra["correction"]["forced_stops"] == 1


@pytest.mark.parametrize("stream", [False, True])
def test_unlearning_exhausting_a_grammar_ends_with_content_filter(client, stream):
    """The grammar allows only the withheld answer, allowed_token_ids only its one-token
    spelling (and EOS, which the grammar forbids before it): no output obeys all three. The
    pipeline forces EOS, vLLM's grammar refuses it, and corrigo answers finish_reason
    "content_filter" (not an engine error), reporting the forced stop."""
    body = {"structured_outputs": {"choice": ["Paris"]}, "allowed_token_ids": [PARIS, EOS]}
    kwargs = dict(
        model=SERVED_MODEL,
        messages=[{"role": "user", "content": QUESTION}],
        max_tokens=8,
        temperature=0,
        extra_body={**body, "correction": UNLEARNING},
    )
    plain = client.chat.completions.create(**{**kwargs, "extra_body": body})
    assert plain.choices[0].message.content == "Paris"
    if not stream:
        response = client.chat.completions.create(**kwargs)
        choice = response.choices[0]
        assert choice.finish_reason == "content_filter", (choice, response.model_extra)
        assert not choice.message.content
        assert response.model_extra["correction"]["forced_stops"] >= 1
        return
    text, finish, report = "", None, None
    for chunk in client.chat.completions.create(stream=True, **kwargs):
        report = chunk.model_extra.get("correction") or report
        for c in chunk.choices:
            text += c.delta.content or ""
            finish = c.finish_reason or finish
    assert finish == "content_filter" and "paris" not in text.lower()
    assert report is not None and report["forced_stops"] >= 1


def test_unlearning_under_a_grammar_spelling_the_answer_in_other_tokens(client):
    # The trie knows "Paris" in its usual tokenizations only; the continuation check
    # (decoding/unlearning/continuation.py) bans whatever token completes it after the row's
    # text, so the grammar's other splits (P+ari+s) run out of tokens and the row ends.
    response = ask(client, {"structured_outputs": {"choice": ["Paris"]}}, UNLEARNING, max_tokens=8)
    assert "paris" not in (response.choices[0].message.content or "").lower()
    assert response.choices[0].finish_reason == "content_filter"
