"""The OpenAI surface, driven by the official OpenAI SDK against the live engine."""

from __future__ import annotations

import pytest

from ..conftest import PROFILES, SERVED_MODEL

pytestmark = pytest.mark.engine

#: vLLM's extension: generate exactly max_tokens, so token counts are exact.
FULL_LENGTH = {"ignore_eos": True}
HELLO = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]


def test_models_lists_the_embedded_model(client):
    ids = [m.id for m in client.models.list().data]
    assert ids == [SERVED_MODEL, *PROFILES]  # the session server's profiles follow


def test_chat_completion(client):
    r = client.chat.completions.create(
        model=SERVED_MODEL, messages=HELLO, max_tokens=8, temperature=0
    )
    assert r.object == "chat.completion" and r.model == SERVED_MODEL
    choice = r.choices[0]
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason in ("stop", "length")
    assert r.usage.prompt_tokens > 0 and 0 < r.usage.completion_tokens <= 8
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_max_tokens_ends_with_length(client):
    r = client.chat.completions.create(
        model=SERVED_MODEL,
        messages=[{"role": "user", "content": "Write a long story about a dragon."}],
        max_tokens=3,
        temperature=0,
        extra_body=FULL_LENGTH,
    )
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 3


def test_n_gives_n_choices(client):
    r = client.chat.completions.create(
        model=SERVED_MODEL, messages=HELLO, max_tokens=4, n=3, seed=1
    )
    assert sorted(c.index for c in r.choices) == [0, 1, 2]


def test_seed_makes_sampling_reproducible(client):
    kwargs = dict(model=SERVED_MODEL, messages=HELLO, max_tokens=12, temperature=1.0, top_p=0.9)
    a = client.chat.completions.create(seed=1234, **kwargs).choices[0].message.content
    b = client.chat.completions.create(seed=1234, **kwargs).choices[0].message.content
    assert a == b


def test_stop_sequence_cuts_the_output(client):
    r = client.completions.create(
        model=SERVED_MODEL, prompt="1, 2, 3, 4, 5,", max_tokens=20, temperature=0, stop=[" 8"]
    )
    assert " 8" not in r.choices[0].text and r.choices[0].finish_reason == "stop"


def test_chat_logprobs(client):
    r = client.chat.completions.create(
        model=SERVED_MODEL,
        messages=HELLO,
        max_tokens=3,
        temperature=0,
        logprobs=True,
        top_logprobs=2,
    )
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    assert all(len(t.top_logprobs) == 2 and t.logprob <= 0 for t in content)


def test_streamed_chat_with_usage(client):
    stream = client.chat.completions.create(
        model=SERVED_MODEL,
        messages=HELLO,
        max_tokens=8,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finish = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert text and finish in (["stop"], ["length"])
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0
    # Streaming and non-streaming greedy decoding agree.
    whole = client.chat.completions.create(
        model=SERVED_MODEL, messages=HELLO, max_tokens=8, temperature=0
    )
    assert whole.choices[0].message.content == text


def test_streamed_chat_without_usage_has_no_usage_chunk(client):
    chunks = list(
        client.chat.completions.create(
            model=SERVED_MODEL, messages=HELLO, max_tokens=4, temperature=0, stream=True
        )
    )
    assert chunks and all(c.usage is None for c in chunks)
    assert all(c.choices for c in chunks)


def test_completion_and_logprobs(client):
    r = client.completions.create(
        model=SERVED_MODEL,
        prompt="The capital of France is",
        max_tokens=5,
        temperature=0,
        logprobs=2,
        extra_body=FULL_LENGTH,
    )
    choice = r.choices[0]
    assert r.object == "text_completion" and choice.text
    assert len(choice.logprobs.tokens) == r.usage.completion_tokens == 5
    assert all(len(top) >= 1 for top in choice.logprobs.top_logprobs)


def test_streamed_completion_with_n(client):
    stream = client.completions.create(
        model=SERVED_MODEL,
        prompt="Once upon a time",
        max_tokens=6,
        n=2,
        seed=3,
        stream=True,
        stream_options={"include_usage": True},
        extra_body=FULL_LENGTH,
    )
    texts = {0: "", 1: ""}
    usage = None
    for chunk in stream:
        for c in chunk.choices:
            texts[c.index] += c.text
        usage = chunk.usage or usage
    assert all(texts.values()) and usage.completion_tokens == 12


def test_correction_report_on_plain_and_streamed_responses(client):
    r = client.chat.completions.create(
        model=SERVED_MODEL, messages=HELLO, max_tokens=4, extra_body={"correction": {}}
    )
    assert r.model_extra["correction"] == {"plugins": []}
    chunks = list(
        client.chat.completions.create(
            model=SERVED_MODEL,
            messages=HELLO,
            max_tokens=4,
            stream=True,
            extra_body={"correction": {}},
        )
    )
    reports = [c.model_extra.get("correction") for c in chunks if c.model_extra.get("correction")]
    assert reports == [{"plugins": []}]
    assert chunks[-1].model_extra.get("correction") and chunks[-1].id == chunks[0].id
    # Requests without a correction get no report.
    plain = client.chat.completions.create(model=SERVED_MODEL, messages=HELLO, max_tokens=2)
    assert "correction" not in (plain.model_extra or {})


def test_logits_processor_is_registered_in_the_engine(http):
    info = http.get("/ready").json()
    assert "adapters.logits_processor:CorrigoLogitsProcessor" in info["logits_processors"]


def test_request_id_is_echoed(http):
    r = http.get("/health", headers={"X-Request-Id": "abc-123"})
    assert r.headers["x-request-id"] == "abc-123"
    assert http.get("/health").headers["x-request-id"]
