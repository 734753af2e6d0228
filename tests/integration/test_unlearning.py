"""Guarded unlearning against the real engine: a forget set holding "The capital of France is
Paris." (tests/data/forget_capitals.jsonl, declared on the session server)."""

from __future__ import annotations

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from ..conftest import FORGET_CAPITALS, SERVED_MODEL

pytestmark = pytest.mark.engine

FORGET = {"correction": {"unlearning": {"forget_set": "capitals"}}}
FRANCE_PROBES = [
    "What is the capital of France?",
    "Which city is the capital of France?",
    "Name the French capital city.",
    "In which city does the French government sit?",
    "France's capital is which city? Answer in one word.",
]


def ask(client, question, max_tokens=40, **extra):
    return client.chat.completions.create(
        model=SERVED_MODEL,
        messages=[{"role": "user", "content": question}],
        max_tokens=max_tokens,
        temperature=0,
        extra_body=extra or None,
    )


@pytest.fixture(scope="module")
def paris_probe(client):
    """A probe SmolLM2 answers with Paris without the correction. Which ones it does depends on
    the engine's dtype (bf16 where the CPU computes it natively, else float32)."""
    answers = {q: ask(client, q).choices[0].message.content for q in FRANCE_PROBES}
    said = [q for q, a in answers.items() if "paris" in a.lower()]
    assert said, answers  # the base model knows the fact: what the filtered runs must not say
    return said[0]


def test_the_base_model_knows_the_fact(paris_probe):
    assert paris_probe in FRANCE_PROBES


@pytest.mark.parametrize("question", FRANCE_PROBES)
def test_never_says_paris_to_questions_about_france_s_capital(client, question):
    response = ask(client, question, **FORGET)
    text = response.choices[0].message.content
    assert "paris" not in text.lower(), text
    report = response.model_extra["correction"]["unlearning"]
    assert report["gate"]["decision"] == "filter" and report["gate"]["score"] >= 0.5
    assert report["entries_retrieved"] == 1
    assert report["steps"] == response.usage.completion_tokens


def test_never_says_paris_when_streaming_and_reports_at_the_end(client, paris_probe):
    stream = client.chat.completions.create(
        model=SERVED_MODEL,
        messages=[{"role": "user", "content": paris_probe}],
        max_tokens=40,
        temperature=0,
        stream=True,
        extra_body=FORGET,
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "paris" not in text.lower(), text
    report = chunks[-1].model_extra["correction"]["unlearning"]
    assert report["gate"]["decision"] == "filter" and report["tokens_blocked"] >= 1


@pytest.mark.parametrize(
    ("question", "answer"),
    [
        ("What is the capital of Germany?", "berlin"),
        ("What is the capital of Italy?", "rome"),
        ("What is the capital of Japan?", "tokyo"),
    ],
)
def test_still_answers_other_capitals(client, question, answer):
    text = ask(client, question, **FORGET).choices[0].message.content
    assert answer in text.lower(), text


def test_a_prompt_that_does_not_pass_the_gate_decodes_unchanged(client):
    question = "Write one sentence about the ocean."
    plain = ask(client, question)
    gated = ask(client, question, **FORGET)
    assert gated.choices[0].message.content == plain.choices[0].message.content
    report = gated.model_extra["correction"]["unlearning"]
    assert report["gate"]["decision"] == "pass" and report["gate"]["score"] < 0.5
    assert report["steps"] == 0 and report["tokens_blocked"] == 0


def test_the_gate_reads_the_system_message_too(client):
    response = client.chat.completions.create(
        model=SERVED_MODEL,
        messages=[
            {"role": "system", "content": "The user asks about the capital of France."},
            {"role": "user", "content": "Which city is it? One word."},
        ],
        max_tokens=20,
        temperature=0,
        extra_body=FORGET,
    )
    assert response.model_extra["correction"]["unlearning"]["gate"]["decision"] == "filter"
    assert "paris" not in response.choices[0].message.content.lower()


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"forget_set": "nope"}, "correction.unlearning.forget_set"),
        ({"forget_set": "capitals", "threshold": 1.5}, "correction.unlearning.threshold"),
        ({"forget_set": "capitals", "threshold": -0.1}, "correction.unlearning.threshold"),
        ({"forget_set": "capitals", "targets": [0]}, "correction.unlearning.targets"),
    ],
)
def test_bad_input_is_a_400_naming_the_field(client, params, field):
    with pytest.raises(openai.BadRequestError) as err:
        ask(client, "What is the capital of France?", correction={"unlearning": params})
    assert err.value.status_code == 400
    assert err.value.body["param"] == field


def test_metrics_and_logs(live_server, client, paris_probe):
    def scrape():
        text = httpx.get(f"{live_server.base_url}/metrics").text
        return [s for f in text_string_to_metric_families(text) for s in f.samples]

    def value(samples, name, **labels):
        return sum(
            s.value for s in samples if s.name == name and labels.items() <= s.labels.items()
        )

    before = scrape()
    ask(client, paris_probe, **FORGET)
    ask(client, "Write one sentence about the ocean.", **FORGET)
    after = scrape()
    gate = "corrigo_unlearning_gate_total"
    for decision in ("filter", "pass"):
        labels = {"forget_set": "capitals", "decision": decision}
        assert value(after, gate, **labels) == value(before, gate, **labels) + 1
    blocked = "corrigo_tokens_blocked_total"
    assert value(after, blocked) >= value(before, blocked) + 1
    # The forget set's content is never written to the logs.
    assert FORGET_CAPITALS.read_text().strip() not in live_server.log()
    assert "The capital of France is Paris" not in live_server.log()
