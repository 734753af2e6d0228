"""Tool calling end to end through the OpenAI SDK, with and without corrections, on the shared
tiny server started as `vllm serve` would be (``--tool-call-parser hermes
--enable-auto-tool-choice``).

A random model never writes a tool call by itself, so each test makes the format certain with a
vLLM feature: ``tool_choice`` ``"required"`` or a named function decodes under vLLM's JSON schema
of the calls; ``"auto"`` is parsed by the hermes parser from ``<tool_call>{...}</tool_call>``
text, which a ``structured_outputs`` regex forces here. The model still chooses the argument
(``"yes"`` or ``"no"``), and a correction that raises the token of ``"no"`` by 100
(tests/integration/delayed_bias/) must decide it, inside the tool call.
"""

from __future__ import annotations

import json

import pytest
from openai import OpenAI

pytestmark = pytest.mark.engine

NO = 4607  # "no" in the tiny model's tokenizer (SmolLM2's)
BOOST_NO = {"delayed_bias": {"token": NO, "bias": 100.0}}
PROXY = {"proxy_tuning": {"expert": "expert", "anti_expert": "anti", "alpha": 1.0}}
CORRECTIONS = {"none": None, "extra": BOOST_NO, "proxy_tuning": PROXY}


def tool(name: str) -> dict:
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": "Record an answer.",
            "parameters": {
                "type": "object",
                "properties": {"answer": {"type": "string", "enum": ["yes", "no"]}},
                "required": ["answer"],
                "additionalProperties": False,
            },
        },
    }


TOOLS = [tool("pick"), tool("log")]
#: One hermes tool call, as the hermes chat templates have the model write it.
CALL = r'<tool_call>\{"name": "pick", "arguments": \{"answer": "(yes|no)"\}\}</tool_call>'
#: Two calls in one answer: parallel tool calls.
TWO_CALLS = CALL + r"\n" + CALL.replace("pick", "log")


@pytest.fixture(scope="module")
def tiny(tiny_server):
    with OpenAI(base_url=f"{tiny_server.base_url}/v1", api_key="unused", max_retries=0) as c:
        yield c


def ask(client: OpenAI, tool_choice, correction=None, regex=None, **extra):
    body = {}
    if correction is not None:
        body["correction"] = correction
    if regex is not None:
        body["structured_outputs"] = {"regex": regex}
    return client.chat.completions.create(
        model="base",
        messages=[{"role": "user", "content": "Answer yes or no with a tool."}],
        tools=TOOLS,
        tool_choice=tool_choice,
        max_tokens=200,
        temperature=0,
        extra_body=body,
        **extra,
    )


def calls_of(message) -> list[tuple[str, dict]]:
    return [(c.function.name, json.loads(c.function.arguments)) for c in message.tool_calls or []]


def check_answers(calls, correction_name: str) -> None:
    assert calls
    for name, arguments in calls:
        assert name in ("pick", "log") and set(arguments) == {"answer"}
        assert arguments["answer"] in ("yes", "no")
        if correction_name == "extra":
            assert arguments["answer"] == "no", calls


@pytest.mark.parametrize("correction", CORRECTIONS)
def test_auto_tool_choice_parses_the_models_tool_call(tiny, correction):
    response = ask(tiny, "auto", CORRECTIONS[correction], regex=CALL)
    choice = response.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    calls = calls_of(choice.message)
    assert [name for name, _ in calls] == ["pick"]
    assert all(c.id and c.type == "function" for c in choice.message.tool_calls)
    check_answers(calls, correction)
    if correction != "none":
        assert response.model_extra["correction"]["plugins"] == list(CORRECTIONS[correction])


@pytest.mark.parametrize("correction", CORRECTIONS)
def test_parallel_tool_calls(tiny, correction):
    response = ask(tiny, "auto", CORRECTIONS[correction], regex=TWO_CALLS)
    calls = calls_of(response.choices[0].message)
    assert [name for name, _ in calls] == ["pick", "log"]
    check_answers(calls, correction)


@pytest.mark.parametrize("correction", CORRECTIONS)
@pytest.mark.parametrize("tool_choice", ["required", "named"])
def test_required_and_named_tool_choice(tiny, tool_choice, correction):
    choice_value = (
        "required"
        if tool_choice == "required"
        else {"type": "function", "function": {"name": "log"}}
    )
    response = ask(tiny, choice_value, CORRECTIONS[correction])
    calls = calls_of(response.choices[0].message)
    if tool_choice == "named":
        assert [name for name, _ in calls] == ["log"]
    check_answers(calls, correction)


@pytest.mark.parametrize("correction", CORRECTIONS)
@pytest.mark.parametrize("tool_choice", ["auto", "named"])
def test_streamed_tool_call_deltas_add_up_to_the_unstreamed_call(tiny, tool_choice, correction):
    choice_value = (
        "auto" if tool_choice == "auto" else {"type": "function", "function": {"name": "pick"}}
    )
    regex = CALL if tool_choice == "auto" else None
    whole = ask(tiny, choice_value, CORRECTIONS[correction], regex=regex)
    expected = calls_of(whole.choices[0].message)
    names: dict[int, str] = {}
    arguments: dict[int, str] = {}
    finish, report, deltas = None, None, 0
    for chunk in ask(tiny, choice_value, CORRECTIONS[correction], regex=regex, stream=True):
        report = chunk.model_extra.get("correction") or report
        for c in chunk.choices:
            for delta in c.delta.tool_calls or []:
                deltas += 1
                if delta.function and delta.function.name:
                    names[delta.index] = delta.function.name
                if delta.function and delta.function.arguments:
                    arguments[delta.index] = (
                        arguments.get(delta.index, "") + delta.function.arguments
                    )
            finish = c.finish_reason or finish
    streamed = [(names[i], json.loads(arguments[i])) for i in sorted(names)]
    assert streamed == expected and deltas >= 2
    assert finish == whole.choices[0].finish_reason
    if correction != "none":
        assert report is not None and report["plugins"] == list(CORRECTIONS[correction])


#: The arguments ``pick`` may take, and ones the tool's own schema rules out (so never made).
ANY_ANSWER = {"type": "object", "properties": {"answer": {"enum": ["yes", "no"]}}}
NEVER_ANSWER = {"type": "object", "properties": {"answer": {"const": "maybe"}}}
PICK = {"type": "function", "function": {"name": "pick"}}


def refine_on_calls(schema: dict, max_rounds: int = 1) -> dict:
    verifier = {"type": "json_schema", "schema": schema, "target": "tool_calls"}
    return {"refinement": {"verifier": verifier, "max_rounds": max_rounds}}


def streamed(chunks) -> tuple[list[tuple[str, dict]], list, str | None, dict | None]:
    """The tool calls, content logprobs, finish reason and correction report of a stream."""
    names: dict[int, str] = {}
    arguments: dict[int, str] = {}
    logprobs, finish, report = [], None, None
    for chunk in chunks:
        report = chunk.model_extra.get("correction") or report
        for c in chunk.choices:
            for delta in c.delta.tool_calls or []:
                if delta.function and delta.function.name:
                    names[delta.index] = delta.function.name
                if delta.function and delta.function.arguments:
                    arguments[delta.index] = (
                        arguments.get(delta.index, "") + delta.function.arguments
                    )
            if c.logprobs and c.logprobs.content:
                logprobs += c.logprobs.content
            finish = c.finish_reason or finish
    calls = [(names[i], json.loads(arguments[i])) for i in sorted(names)]
    return calls, logprobs, finish, report


def test_refinement_verifies_tool_call_arguments_and_keeps_the_call_and_logprobs(tiny):
    """The verifier reads the round's tool call: a schema its arguments meet accepts the draft
    (its text is empty, so a verifier of the text alone would reject it); the answer keeps the
    call and the logprobs, streamed (as OpenAI tool-call deltas) and not."""
    asked = {"logprobs": True, "top_logprobs": 2}
    whole = ask(tiny, PICK, refine_on_calls(ANY_ANSWER), **asked)
    choice = whole.choices[0]
    report = whole.model_extra["correction"]["refinement"]
    assert (report["rounds"], report["accepted"], report["stop_reason"]) == (1, True, "accepted")
    calls = calls_of(choice.message)
    assert [name for name, _ in calls] == ["pick"]
    check_answers(calls, "none")
    assert choice.message.tool_calls[0].id and choice.message.tool_calls[0].type == "function"
    assert report["candidates"][0]["tool_calls"] == [
        {"name": "pick", "arguments": choice.message.tool_calls[0].function.arguments}
    ]
    tokens = choice.logprobs.content
    assert tokens and all(len(t.top_logprobs) == 2 for t in tokens)
    assert '"answer"' in "".join(t.token for t in tokens)

    stream_calls, stream_logprobs, finish, stream_report = streamed(
        ask(tiny, PICK, refine_on_calls(ANY_ANSWER), stream=True, **asked)
    )
    assert stream_calls == calls and finish == choice.finish_reason
    assert [(t.token, t.logprob) for t in stream_logprobs] == [(t.token, t.logprob) for t in tokens]
    assert stream_report["refinement"]["accepted"] is True

    # Logprobs only when asked.
    plain = ask(tiny, PICK, refine_on_calls(ANY_ANSWER))
    assert plain.choices[0].logprobs is None and calls_of(plain.choices[0].message) == calls
    assert streamed(ask(tiny, PICK, refine_on_calls(ANY_ANSWER), stream=True))[1] == []


def test_refinement_rejects_tool_call_arguments_against_the_schema(tiny):
    """Arguments the verifier's schema rules out are rejected round after round, with the
    schema's error as feedback; the answer still carries the kept round's tool call."""
    response = ask(tiny, PICK, refine_on_calls(NEVER_ANSWER, max_rounds=2))
    report = response.model_extra["correction"]["refinement"]
    assert (report["rounds"], report["accepted"]) == (2, False)
    for candidate in report["candidates"]:
        verdict = candidate["verdict"]
        assert verdict["accepted"] is False and verdict["score"] == 0.5
        assert "tool call 0 (pick)" in verdict["feedback"] and "'maybe'" in verdict["feedback"]
        assert [c["name"] for c in candidate["tool_calls"]] == ["pick"]
    calls = calls_of(response.choices[0].message)
    assert [name for name, _ in calls] == ["pick"]
    check_answers(calls, "none")
