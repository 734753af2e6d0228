"""Reasoning output end to end through the OpenAI SDK, with and without a correction, on a tiny
server started as `vllm serve` would be with ``--reasoning-parser olmo3``.

The olmo3 parser (vllm/reasoning/olmo3_reasoning_parser.py) needs no special tokens: it splits
``<think>THOUGHT</think>ANSWER`` as text, and finds ``</think>`` by the ids of ``</`` (or
`` </``), ``think``, ``>``, which the tiny model's tokenizer (SmolLM2's) has; the think-tag
parsers of the other families need ``<think>``/``</think>`` as single tokens, which it lacks.

A random model never writes the tags by itself, so a ``structured_outputs`` regex forces the
text. By default vLLM applies a grammar only after the reasoning ends (to the answer); this
server sets ``enable_in_reasoning`` (``--structured-outputs-config``) so that the regex covers
the thought too. The model still chooses ``yes`` or ``no`` in the thought and in the answer, and
a correction that raises the token of one word by 100 (tests/integration/delayed_bias/)
must decide both, on both sides of the split.

The server is this module's own: a reasoning parser changes what ``content`` holds for every
request, which the other modules' servers must not see.
"""

from __future__ import annotations

import re

import pytest
from openai import OpenAI

from ..support import start_server, write_config
from . import tiny

pytestmark = pytest.mark.engine

#: Tokens of the tiny model's tokenizer (SmolLM2's), each a whole word after a quote.
TOKENS = {"yes": 10407, "no": 4607}
#: What the model must write: a thought and an answer, each naming a word it chooses.
FORCED = r'<think>Is it "(yes|no)"\? Let me think\.</think>It is "(yes|no)"\.'
THOUGHT = re.compile(r'Is it "(yes|no)"\? Let me think\.')
ANSWER = re.compile(r'It is "(yes|no)"\.')


@pytest.fixture(scope="module")
def reasoning_server(tiny_deployment):
    """``base`` with the olmo3 reasoning parser, the grammar applied during reasoning, and the
    extra correction ``delayed_bias``."""
    folder = tiny_deployment.folder / "reasoning"
    folder.mkdir(exist_ok=True)
    config = write_config(
        folder / "corrigo.toml",
        {
            "model": {"path": str(tiny_deployment.paths["base"])},
            "engine": tiny.ENGINE,
            "corrections": {"extra": ["tests.integration.delayed_bias:CORRECTION"]},
        },
    )
    flags = ["--reasoning-parser", "olmo3"]
    flags += [
        "--structured-outputs-config",
        '{"backend": "xgrammar", "enable_in_reasoning": true}',
    ]
    server = start_server(config, folder / "server.log", flags=flags)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def client(reasoning_server):
    with OpenAI(base_url=f"{reasoning_server.base_url}/v1", api_key="unused", max_retries=0) as c:
        yield c


def ask(client: OpenAI, correction=None, **extra):
    body = {"structured_outputs": {"regex": FORCED}}
    if correction is not None:
        body["correction"] = correction
    return client.chat.completions.create(
        model="base",
        messages=[{"role": "user", "content": "Is it yes or no? Think first."}],
        max_tokens=60,
        temperature=0,
        extra_body=body,
        **extra,
    )


def split(message) -> tuple[str, str]:
    """``(reasoning, content)`` of a message or a delta (vLLM 0.32 names the field
    ``reasoning``; the SDK keeps it as an extra field)."""
    return message.model_extra.get("reasoning") or "", message.content or ""


def words(reasoning: str, content: str) -> tuple[str, str]:
    """The words chosen in the thought and in the answer; fails unless the split is exact."""
    thought, answer = THOUGHT.fullmatch(reasoning), ANSWER.fullmatch(content)
    assert thought and answer, (reasoning, content)
    return thought.group(1), answer.group(1)


def streamed(client: OpenAI, correction=None) -> tuple[str, str, dict | None, str | None]:
    """The reasoning and content deltas added up, the correction report, the finish reason."""
    reasoning, content, report, finish, chunks = "", "", None, None, 0
    for chunk in ask(client, correction, stream=True):
        report = chunk.model_extra.get("correction") or report
        for c in chunk.choices:
            delta_reasoning, delta_content = split(c.delta)
            reasoning += delta_reasoning
            content += delta_content
            chunks += bool(delta_reasoning or delta_content)
            finish = c.finish_reason or finish
    # Token by token, not one block at the end.
    assert chunks >= 4, chunks
    return reasoning, content, report, finish


def boost(word: str) -> dict:
    """The correction that raises ``word``'s token by 100 from the first step on."""
    return {"delayed_bias": {"token": TOKENS[word], "bias": 100.0}}


def test_reasoning_and_content_are_split(client):
    response = ask(client)
    choice = response.choices[0]
    assert choice.finish_reason == "stop", choice
    words(*split(choice.message))
    assert "correction" not in response.model_extra


# Uncorrected, the tiny model writes "no" in the thought and "yes" in the answer: each word's
# correction overturns one side of the split.
@pytest.mark.parametrize("word", TOKENS)
def test_a_correction_decides_both_sides_of_the_split(client, word):
    response = ask(client, boost(word))
    choice = response.choices[0]
    assert choice.finish_reason == "stop", choice
    assert words(*split(choice.message)) == (word, word)
    assert response.model_extra["correction"]["plugins"] == ["delayed_bias"]


@pytest.mark.parametrize("word", [None, "yes"], ids=["plain", "corrected"])
def test_streamed_deltas_add_up_to_the_unstreamed_split(client, word):
    correction = boost(word) if word else None
    whole = ask(client, correction).choices[0]
    reasoning, content, report, finish = streamed(client, correction)
    assert (reasoning, content) == split(whole.message)
    chosen = words(reasoning, content)
    assert finish == whole.finish_reason == "stop"
    if word:
        assert chosen == (word, word)
        assert report is not None and report["plugins"] == ["delayed_bias"]
    else:
        assert report is None
