"""Guarded unlearning against the real engine: a forget set holding "The capital of France is
Paris." (tests/data/forget_capitals.jsonl, declared on the session server)."""

from __future__ import annotations

import asyncio

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from decoding.unlearning.policy import DEFAULT_REFUSAL

from ..conftest import (
    API_KEY,
    FORGET_ABSTENTION,
    FORGET_CAPITALS,
    FORGET_REFUSAL,
    GUARDED_PROFILE,
    SERVED_MODEL,
    TRAINED_SET,
)

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


def test_concurrent_gated_requests_each_get_their_own_decision(live_server, client):
    """Concurrent requests' gate encodes share forwards (decoding/unlearning/batcher.py): each
    request's decision and score are what it gets alone."""
    prompts = [*FRANCE_PROBES[:4], "Write one sentence about the ocean.", "What is 2 + 2?"]

    def gate_of(response):
        return response.model_extra["correction"]["unlearning"]["gate"]

    alone = [gate_of(ask(client, p, max_tokens=4, **FORGET)) for p in prompts]

    async def together():
        async with openai.AsyncOpenAI(
            base_url=f"{live_server.base_url}/v1", api_key=API_KEY, max_retries=0, timeout=120
        ) as aclient:
            return await asyncio.gather(
                *(
                    aclient.chat.completions.create(
                        model=SERVED_MODEL,
                        messages=[{"role": "user", "content": p}],
                        max_tokens=4,
                        temperature=0,
                        extra_body=FORGET,
                    )
                    for p in prompts
                )
            )

    for prompt, one, response in zip(prompts, alone, asyncio.run(together()), strict=True):
        gate = gate_of(response)
        assert gate["decision"] == one["decision"], prompt
        assert gate["score"] == pytest.approx(one["score"], abs=2e-4), prompt
    assert [g["decision"] for g in alone] == ["filter"] * 4 + ["pass"] * 2


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


# -- on_match: what an open gate does (decoding/unlearning/policy.py) ---------------------------

REFUSE = {"correction": {"unlearning": {"forget_set": "capitals", "on_match": "refuse"}}}
ABSTAIN = {"correction": {"unlearning": {"forget_set": "capitals", "on_match": "abstain"}}}
OCEAN = "Write one sentence about the ocean."
#: The private vault set's question (tests/data/forget_vault.jsonl).
VAULT_QUESTION = "What is the code name of the Halvorsen merger?"


def test_refuse_answers_every_choice_with_the_message_and_counts_the_prompt_only(client):
    plain = ask(client, FRANCE_PROBES[0], max_tokens=1)
    response = ask(client, FRANCE_PROBES[0], n=2, **REFUSE)
    assert [c.index for c in response.choices] == [0, 1]
    for choice in response.choices:
        assert choice.message.content == FORGET_REFUSAL and choice.message.role == "assistant"
        assert choice.finish_reason == "content_filter"
    assert response.usage.completion_tokens == 0
    assert response.usage.prompt_tokens == plain.usage.prompt_tokens > 0
    assert response.usage.total_tokens == response.usage.prompt_tokens
    report = response.model_extra["correction"]["unlearning"]
    assert report["on_match"] == "refuse" and report["outcome"] == "refused"
    assert report["gate"]["decision"] == "filter" and report["steps"] == 0


def test_refuse_streams_one_chunk_then_usage_and_the_report(client):
    chunks = list(
        client.chat.completions.create(
            model=SERVED_MODEL,
            messages=[{"role": "user", "content": FRANCE_PROBES[1]}],
            max_tokens=40,
            stream=True,
            stream_options={"include_usage": True},
            extra_body=REFUSE,
        )
    )
    content = [c for c in chunks if c.choices]
    assert len(content) == 1, chunks
    [choice] = content[0].choices
    assert choice.delta.content == FORGET_REFUSAL and choice.finish_reason == "content_filter"
    [usage] = [c.usage for c in chunks if c.usage is not None]
    assert usage.completion_tokens == 0 and usage.prompt_tokens > 0
    report = chunks[-1].model_extra["correction"]["unlearning"]
    assert report["outcome"] == "refused"
    assert {c.id for c in chunks} == {content[0].id}


def test_refuse_on_completions_batched_and_streamed(client):
    prompts = [FRANCE_PROBES[0], FRANCE_PROBES[2]]
    plain = client.completions.create(model=SERVED_MODEL, prompt=prompts, max_tokens=1)
    response = client.completions.create(
        model=SERVED_MODEL, prompt=prompts, n=2, max_tokens=20, extra_body=REFUSE
    )
    assert [c.index for c in response.choices] == [0, 1, 2, 3]
    assert {c.text for c in response.choices} == {FORGET_REFUSAL}
    assert {c.finish_reason for c in response.choices} == {"content_filter"}
    assert response.usage.prompt_tokens == plain.usage.prompt_tokens
    assert response.usage.completion_tokens == 0
    assert response.model_extra["correction"]["unlearning"]["outcome"] == "refused"

    chunks = list(
        client.completions.create(
            model=SERVED_MODEL, prompt=prompts[0], max_tokens=20, stream=True, extra_body=REFUSE
        )
    )
    assert [c.choices[0].text for c in chunks if c.choices] == [FORGET_REFUSAL]
    assert all(c.usage is None for c in chunks)  # the client did not ask for usage
    assert chunks[-1].model_extra["correction"]["unlearning"]["outcome"] == "refused"


def test_refuse_lets_a_request_the_gate_passes_generate(client):
    plain = ask(client, OCEAN)
    response = ask(client, OCEAN, **REFUSE)
    assert response.choices[0].message.content == plain.choices[0].message.content
    assert response.choices[0].finish_reason != "content_filter"
    report = response.model_extra["correction"]["unlearning"]
    assert report["outcome"] == "passed" and report["on_match"] == "refuse"


#: A reply already begun with the fact's subject: the next token is " Paris" for the base model
#: on any hardware (the plain answers to the questions above vary with the CPU's kernels).
PREFILLED = [
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "The capital of France is"},
]
CONTINUE = {"continue_final_message": True, "add_generation_prompt": False}


def prefilled(client, max_tokens=30, extra_body=None, **kwargs):
    return client.chat.completions.create(
        model=SERVED_MODEL,
        messages=PREFILLED,
        max_tokens=max_tokens,
        extra_body={**CONTINUE, **(extra_body or {})},
        **kwargs,
    )


def test_abstain_forces_the_phrase_once_then_decodes_freely(client):
    plain = prefilled(client, temperature=0, max_tokens=3).choices[0].message.content
    assert plain.lower().startswith(" paris"), plain  # what the filters must block
    response = prefilled(client, temperature=0, extra_body=ABSTAIN)
    text = response.choices[0].message.content
    assert text.startswith(" " + FORGET_ABSTENTION) and "paris" not in text.lower(), text
    assert text.count(FORGET_ABSTENTION) == 1, text
    assert response.choices[0].finish_reason in ("stop", "length")
    report = response.model_extra["correction"]["unlearning"]
    assert report["on_match"] == "abstain" and report["outcome"] == "abstained"
    assert report["abstentions"] == 1 and report["tokens_blocked"] >= 1
    assert report["steps"] == response.usage.completion_tokens > 0


def test_steer_on_the_same_prompt_says_something_else(client):
    response = prefilled(client, temperature=0, extra_body=FORGET)
    text = response.choices[0].message.content
    assert "paris" not in text.lower() and FORGET_ABSTENTION not in text, text
    report = response.model_extra["correction"]["unlearning"]
    assert report["outcome"] == "steered" and report["tokens_blocked"] >= 1


def test_abstain_when_streaming_reports_the_abstentions_of_every_choice(client):
    chunks = list(prefilled(client, temperature=1.0, seed=7, n=2, stream=True, extra_body=ABSTAIN))
    texts = ["", ""]
    for chunk in chunks:
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
    for text in texts:
        assert text.startswith(" " + FORGET_ABSTENTION) and "paris" not in text.lower(), texts
    report = chunks[-1].model_extra["correction"]["unlearning"]
    assert report["outcome"] == "abstained" and report["abstentions"] == 2


def test_abstain_on_completions_opens_a_reply_with_the_bare_phrase(client):
    response = client.completions.create(
        model=SERVED_MODEL,
        prompt="Q: What is the capital of France?\nA: The capital of France is",
        max_tokens=20,
        temperature=0,
        extra_body=ABSTAIN,
    )
    text = response.choices[0].text
    assert text.startswith(" " + FORGET_ABSTENTION) and "paris" not in text.lower(), text
    assert response.model_extra["correction"]["unlearning"]["abstentions"] == 1


def test_abstain_leaves_a_request_the_gate_passes_unchanged(client):
    plain = ask(client, OCEAN)
    response = ask(client, OCEAN, **ABSTAIN)
    assert response.choices[0].message.content == plain.choices[0].message.content
    assert response.model_extra["correction"]["unlearning"]["outcome"] == "passed"


def test_steer_is_unchanged_and_says_so(client):
    plain = ask(client, FRANCE_PROBES[0], **FORGET)
    response = ask(
        client,
        FRANCE_PROBES[0],
        correction={"unlearning": {"forget_set": "capitals", "on_match": "steer"}},
    )
    assert response.choices[0].message.content == plain.choices[0].message.content
    assert FORGET_ABSTENTION not in response.choices[0].message.content
    report = response.model_extra["correction"]["unlearning"]
    assert report["on_match"] == "steer" and report["outcome"] == "steered"
    assert "abstentions" not in report


def test_a_profile_s_enforced_policy_can_be_made_stricter_not_removed(client):
    # The guarded profile enforces unlearning with the private vault set: a request may still
    # name correction.unlearning to raise its policy (and nothing else).
    response = client.chat.completions.create(
        model=GUARDED_PROFILE,
        messages=[{"role": "user", "content": VAULT_QUESTION}],
        max_tokens=20,
        extra_body={"correction": {"unlearning": {"on_match": "refuse"}}},
    )
    assert response.choices[0].finish_reason == "content_filter"
    assert response.choices[0].message.content == DEFAULT_REFUSAL
    assert response.model_extra["correction"]["unlearning"] == {
        "gate": {"decision": "filter"},
        "on_match": "refuse",
        "outcome": "refused",
        "abstentions": 0,
    }
    for correction, param in [
        ({"unlearning": {"on_match": "refuse", "threshold": 0.9}}, "correction.unlearning"),
        ({"unlearning": {"on_match": "lenient"}}, "correction.unlearning"),
    ]:
        with pytest.raises(openai.BadRequestError) as err:
            client.chat.completions.create(
                model=GUARDED_PROFILE,
                messages=[{"role": "user", "content": VAULT_QUESTION}],
                max_tokens=5,
                extra_body={"correction": correction},
            )
        assert err.value.body["param"] == param and err.value.body["code"] == "correction_enforced"


def test_outcome_metrics(live_server, client):
    def outcomes():
        text = httpx.get(f"{live_server.base_url}/metrics").text
        return {
            s.labels["outcome"]: s.value
            for f in text_string_to_metric_families(text)
            for s in f.samples
            if s.name == "corrigo_unlearning_outcomes_total"
            and s.labels["forget_set"] == "capitals"
        }

    before = outcomes()
    ask(client, FRANCE_PROBES[0], max_tokens=1, **REFUSE)
    prefilled(client, temperature=0, max_tokens=8, extra_body=ABSTAIN)
    prefilled(client, temperature=0, max_tokens=3, extra_body=FORGET)
    ask(client, OCEAN, max_tokens=5, **FORGET)
    after = outcomes()
    for outcome in ("refused", "abstained", "steered", "passed"):
        assert after.get(outcome, 0) == before.get(outcome, 0) + 1, (outcome, before, after)


# -- the trained gate (decoding/unlearning/classifier.py) ---------------------------------------

TRAINED = {"correction": {"unlearning": {"forget_set": TRAINED_SET}}}
#: Near the capitals set's one entry (the cosine gate opens), not asking it; not among the
#: trained gate's negatives (tests/data/retain_capitals.txt).
GERMANY = "What is the capital of Germany?"


def gate_report(response) -> dict:
    return response.model_extra["correction"]["unlearning"]["gate"]


def test_the_server_decides_with_the_trained_gate_where_the_set_has_one(
    live_server, client, paris_probe
):
    def gate_total(decision: str, gate: str) -> float:
        text = httpx.get(f"{live_server.base_url}/metrics").text
        return sum(
            s.value
            for f in text_string_to_metric_families(text)
            for s in f.samples
            if s.name == "corrigo_unlearning_gate_total"
            and s.labels == {"forget_set": TRAINED_SET, "decision": decision, "gate": gate}
        )

    cosine = gate_report(ask(client, GERMANY, max_tokens=1, **FORGET))
    assert cosine["by"] == "cosine" and cosine["decision"] == "filter", cosine
    before = gate_total("pass", "classifier"), gate_total("filter", "classifier")
    near = gate_report(ask(client, GERMANY, max_tokens=1, **TRAINED))
    assert near["by"] == "classifier" and near["decision"] == "pass", near
    assert near["score"] < near["threshold"] <= 1
    response = ask(client, paris_probe, **TRAINED)
    probe = gate_report(response)
    assert probe["by"] == "classifier" and probe["decision"] == "filter", probe
    assert "paris" not in response.choices[0].message.content.lower()
    assert (gate_total("pass", "classifier"), gate_total("filter", "classifier")) == (
        before[0] + 1,
        before[1] + 1,
    )


def test_a_threshold_moved_on_a_set_with_a_trained_gate_is_a_400(client):
    correction = {"unlearning": {"forget_set": TRAINED_SET, "threshold": 0.3}}
    with pytest.raises(openai.BadRequestError) as err:
        ask(client, GERMANY, max_tokens=1, correction=correction)
    assert err.value.body["param"] == "correction.unlearning.threshold"
