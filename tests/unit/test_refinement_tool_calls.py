"""Refinement over tool calls (no engine): the candidate verifiers read carries the round's
tool calls, ``json_schema`` with ``target: "tool_calls"`` checks their arguments, and the loop
keeps, compares and shows the calls."""

import asyncio

import pytest

from decoding.correction import parse_correction
from decoding.params import CorrectionError
from decoding.refinement import (
    VERIFIER_TYPES_CONTEXT,
    Generation,
    VerifyContext,
    build_verifier,
    parse_verifier,
    refine,
)
from decoding.refinement.answers import Answer, ToolCall, tool_calls_of
from decoding.refinement.text_verifiers import SCHEMA_TARGETS
from server.refinement import webhook
from server.refinement.verifiers import SERVER_VERIFIER_TYPES

QUESTION = [{"role": "user", "content": "Answer yes or no with a tool."}]
ARGS = {
    "type": "object",
    "properties": {"answer": {"type": "string", "enum": ["yes", "no"]}},
    "required": ["answer"],
    "additionalProperties": False,
}
ON_CALLS = {"type": "json_schema", "schema": ARGS, "target": "tool_calls"}


def verdict(spec, candidate):
    return asyncio.run(build_verifier(parse_verifier(spec)).verify(candidate, VerifyContext([])))


def calls(*arguments, name="pick"):
    return tuple(ToolCall(name, a) for a in arguments)


def test_an_answer_is_its_text_and_carries_its_tool_calls():
    answer = Answer("hi", calls('{"answer": "no"}'))
    assert answer == "hi" and isinstance(answer, str) and answer.strip() == "hi"
    assert tool_calls_of(answer) == (ToolCall("pick", '{"answer": "no"}'),)
    assert tool_calls_of("plain text") == () and tool_calls_of(Answer("x")) == ()
    assert SCHEMA_TARGETS == ("content", "tool_calls")


def test_json_schema_on_tool_call_arguments():
    good = verdict(ON_CALLS, Answer("", calls('{"answer": "no"}', '{"answer": "yes"}')))
    assert good.accepted and good.score == 1 and good.details["calls"] == 2
    # The second call's arguments break the schema: the whole answer is rejected, naming it.
    bad = verdict(ON_CALLS, Answer("", calls('{"answer": "no"}', '{"answer": "maybe"}')))
    assert not bad.accepted and bad.score == 0.5 and bad.details["call"] == 1
    assert "tool call 1 (pick)" in bad.feedback and "'maybe'" in bad.feedback
    not_json = verdict(ON_CALLS, Answer("", calls('{"answer": ')))
    assert not not_json.accepted and not_json.score == 0 and "must be JSON" in not_json.feedback
    deep = verdict(ON_CALLS, Answer("", calls("[" * 100_000 + "]" * 100_000)))
    assert not deep.accepted and "nested too deeply" in deep.feedback


def test_tool_calls_target_rejects_an_answer_without_calls_and_ignores_its_text():
    # Valid JSON in the text is not a tool call.
    for candidate in ('{"answer": "no"}', Answer('{"answer": "no"}')):
        rejected = verdict(ON_CALLS, candidate)
        assert not rejected.accepted and "no tool call" in rejected.feedback
    # The default target reads the text and ignores the calls.
    on_text = {"type": "json_schema", "schema": ARGS}
    assert not verdict(on_text, Answer("no JSON", calls('{"answer": "no"}'))).accepted
    assert verdict(on_text, Answer('{"answer": "no"}', calls("broken"))).accepted


@pytest.mark.parametrize("target", ["arguments", "", 5, None, ["tool_calls"]])
def test_a_bad_target_names_the_field(target):
    spec = {**ON_CALLS, "target": target}
    with pytest.raises(CorrectionError) as err:
        parse_correction({"refinement": {"verifier": spec}})
    assert err.value.param == "correction.refinement.verifier.target", err.value.message
    nested = {"any": [{"type": "regex", "pattern": "x"}, spec]}
    with pytest.raises(CorrectionError) as err:
        parse_correction({"refinement": {"verifier": nested}})
    assert err.value.param == "correction.refinement.verifier.any.1.target"


class Calls:
    """A fake engine whose replies are tool calls (one list of argument texts per round)."""

    def __init__(self, *replies):
        self.replies = list(replies)
        self.calls = []

    async def __call__(self, messages, *, n=1, max_tokens=None, temperature=None):
        self.calls.append(list(messages))
        return [Generation("", 5, "tool_calls", calls(*self.replies.pop(0)))]


def test_the_loop_verifies_refines_and_keeps_tool_calls():
    script = Calls(
        ['{"answer": "maybe"}'], ['{"answer": "maybe"}', '{"answer": 1}'], ['{"answer": "no"}']
    )
    p = parse_correction({"refinement": {"verifier": ON_CALLS, "max_rounds": 3, "feedback": True}})
    out = asyncio.run(refine(p.refinement, QUESTION, script))
    # Three different sets of calls (all with empty text) are three answers, not a repeat.
    assert [c.verdict.accepted for c in out.candidates] == [False, False, True]
    assert out.chosen.index == 2 and out.stop_reason == "accepted"
    assert out.chosen.tool_calls == calls('{"answer": "no"}')
    assert out.truth.flip == "incorrect_to_correct"
    # The retry shows the model the calls it made, as text, and the verifier's feedback.
    shown = script.calls[1][1]
    assert shown["role"] == "assistant"
    assert shown["content"] == 'Tool call: pick({"answer": "maybe"})'
    assert "'maybe' is not one of" in script.calls[1][2]["content"]
    report = out.report()["candidates"]
    assert report[1]["tool_calls"] == [
        {"name": "pick", "arguments": '{"answer": "maybe"}'},
        {"name": "pick", "arguments": '{"answer": 1}'},
    ]


def test_repeated_tool_calls_are_a_repeated_answer():
    script = Calls(['{"answer": "maybe"}'], ['{"answer": "maybe"}'], ['{"answer": "no"}'])
    p = parse_correction({"refinement": {"verifier": ON_CALLS, "max_rounds": 3}})
    out = asyncio.run(refine(p.refinement, QUESTION, script))
    assert out.stop_reason == "repeated_answer" and len(out.candidates) == 2


def test_a_webhook_receives_the_tool_calls(monkeypatch):
    posted = []

    async def post_json(url, body, *, timeout):
        posted.append(body)
        return 200, b'{"accepted": true}'

    monkeypatch.setattr(webhook, "post_json", post_json)
    context = {
        VERIFIER_TYPES_CONTEXT: SERVER_VERIFIER_TYPES,
        "verifier_url_prefixes": ["http://127.0.0.1:"],
    }
    spec = parse_verifier({"type": "webhook", "url": "http://127.0.0.1:9/v"}, context)
    verifier = build_verifier(spec, SERVER_VERIFIER_TYPES)
    answer = Answer("text", calls('{"answer": "no"}'))
    assert asyncio.run(verifier.verify(answer, VerifyContext(QUESTION))).accepted
    assert asyncio.run(verifier.verify("text", VerifyContext(QUESTION))).accepted
    assert posted[0]["candidate"] == "text"
    assert posted[0]["tool_calls"] == [{"name": "pick", "arguments": '{"answer": "no"}'}]
    assert "tool_calls" not in posted[1]
