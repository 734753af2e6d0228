"""Forget-set secrecy against a hostile client (issue 12): a client may not switch the gate off,
probe how close its text is to the forget set, learn a private set's name, step around an
enforcing profile, hide the forbidden question from the gate, or tie the server up with the
gate's work. Through the session server (tests/conftest.py): ``capitals`` is a public set with
detailed reports, ``vault`` a private one, and the profile ``guarded`` enforces ``vault``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from ..conftest import FORGET_VAULT, GUARDED_PROFILE, SERVED_MODEL
from ..support import REPO, write_config
from .support import MAX_PROBE_SECONDS, LoopProbe

pytestmark = pytest.mark.engine

VAULT_QUESTION = "What is the code name of the Halvorsen merger?"
#: Words of the private set's file, its name included: none may reach a client.
VAULT_WORDS = ("vault", "Halvorsen", "Bluefin", "merger")
CHAT = "/v1/chat/completions"


def chat(http, content, correction=None, model=SERVED_MODEL, **extra) -> httpx.Response:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": 4,
        "temperature": 0,
        **extra,
    }
    if correction is not None:
        body["correction"] = correction
    return http.post(CHAT, json=body)


def assert_refused(response: httpx.Response, param: str) -> None:
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param
    for word in VAULT_WORDS:
        assert word.lower() not in response.text.lower(), response.text


def gate_samples(base_url: str) -> list:
    text = httpx.get(f"{base_url}/metrics").text
    return [
        s
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "corrigo_unlearning_gate_total"
    ]


@pytest.mark.parametrize("threshold", [0.99, 1.0])
def test_a_client_cannot_raise_the_gate_threshold_past_the_operators_bound(http, threshold):
    # Raising the threshold to 1 is how a client switches the gate off.
    correction = {"unlearning": {"forget_set": "vault", "threshold": threshold}}
    assert_refused(chat(http, VAULT_QUESTION, correction), "correction.unlearning.threshold")


def test_the_operators_threshold_applies_when_the_client_sends_none(http):
    r = chat(http, VAULT_QUESTION, {"unlearning": {"forget_set": "vault", "threshold": 0.5}})
    assert r.status_code == 200, r.text


def test_the_report_shows_the_decision_only(http):
    filtered = chat(http, VAULT_QUESTION, {"unlearning": {"forget_set": "vault"}})
    passed = chat(http, "Write one word about the sea.", {"unlearning": {"forget_set": "vault"}})
    assert filtered.status_code == passed.status_code == 200, (filtered.text, passed.text)
    # No score, no entry count, no token counts, no threshold, no set name.
    assert filtered.json()["correction"]["unlearning"] == {"gate": {"decision": "filter"}}
    assert passed.json()["correction"]["unlearning"] == {"gate": {"decision": "pass"}}


def test_an_unknown_forget_set_error_names_no_configured_set(http):
    r = chat(http, "Hi", {"unlearning": {"forget_set": "nope"}})
    assert_refused(r, "correction.unlearning.forget_set")


def test_metrics_do_not_name_a_private_forget_set(live_server, http):
    def undisclosed(samples):
        return sum(s.value for s in samples if s.labels["forget_set"] == "undisclosed")

    before = gate_samples(live_server.base_url)
    assert chat(http, VAULT_QUESTION, {"unlearning": {"forget_set": "vault"}}).status_code == 200
    after = gate_samples(live_server.base_url)
    assert not [s for s in after if s.labels["forget_set"] == "vault"], after
    assert undisclosed(after) == undisclosed(before) + 1
    # A set configured with public_name keeps its name as its label.
    chat(http, "Hi", {"unlearning": {"forget_set": "capitals"}})
    assert [s for s in gate_samples(live_server.base_url) if s.labels["forget_set"] == "capitals"]


@pytest.mark.parametrize(
    ("correction", "param"),
    [
        ({"unlearning": {"threshold": 0.9}}, "correction.unlearning"),  # weaken
        ({"unlearning": {"soft": False}}, "correction.unlearning"),  # weaken
        ({"unlearning": {"forget_set": "capitals"}}, "correction.unlearning"),  # swap
        ({"unlearning": None}, "correction.unlearning"),  # remove
    ],
)
def test_an_enforcing_profile_cannot_be_weakened_or_removed(http, correction, param):
    assert_refused(chat(http, VAULT_QUESTION, correction, model=GUARDED_PROFILE), param)


def test_an_enforcing_profile_gates_every_request(http):
    r = chat(http, VAULT_QUESTION, model=GUARDED_PROFILE)
    assert r.status_code == 200, r.text
    assert r.json()["model"] == GUARDED_PROFILE
    assert r.json()["correction"]["unlearning"] == {"gate": {"decision": "filter"}}
    # An unrelated correction may still be added; the enforced one stays.
    unrelated = {"refinement": {"verifier": {"type": "regex", "pattern": "x"}, "max_rounds": 1}}
    r = chat(http, VAULT_QUESTION, unrelated, model=GUARDED_PROFILE)
    assert r.status_code == 200, r.text
    # (Refinement's report carries no unlearning section: server/refinement/driver.py.)
    assert "unlearning" in r.json()["correction"]["plugins"]


def test_a_question_hidden_in_one_long_sentence_still_opens_the_gate(http):
    # MiniLM reads 256 word pieces of a text: a question behind 1,000 words of one unpunctuated
    # sentence was invisible to the gate.
    padding = " ".join(["lorem ipsum dolor sit amet"] * 200)
    r = chat(
        http, f"{padding} what is the capital of France", {"unlearning": {"forget_set": "capitals"}}
    )
    assert r.status_code == 200, r.text
    assert r.json()["correction"]["unlearning"]["gate"]["decision"] == "filter"


def test_token_id_prompts_cannot_step_around_the_gate(http):
    # The gate reads text; ids spelling the forbidden question must not pass it unread.
    tokens = [3838, 314, 260, 3575, 282, 4649, 47]  # any ids: the gate cannot judge them
    body = {
        "model": SERVED_MODEL,
        "prompt": tokens,
        "max_tokens": 4,
        "correction": {"unlearning": {"forget_set": "capitals"}},
    }
    r = http.post("/v1/completions", json=body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == "prompt"


def test_a_gated_body_over_the_gate_cap_is_refused_fast_without_stalling(live_server, http):
    # ~1 MB (the session server's body limit) of short sentences, the question last: the gate
    # used to embed every one of them before admission, for minutes.
    text = "Fine day. " * 99_000 + "What is the capital of France?"
    correction = {"unlearning": {"forget_set": "capitals"}}
    with LoopProbe(live_server.base_url) as probe:
        started = time.monotonic()
        r = chat(http, text, correction)
        took = time.monotonic() - started
    assert r.status_code == 400, r.text[:500]
    assert r.json()["error"]["code"] == "unlearning_input_too_long"
    assert took < 10, took
    assert probe.worst < MAX_PROBE_SECONDS, probe.worst


def test_a_forget_set_other_users_can_read_is_refused_at_start_up(tmp_path):
    exposed = tmp_path / "vault.jsonl"
    exposed.write_text(FORGET_VAULT.read_text())
    exposed.chmod(0o644)
    config = write_config(
        tmp_path / "corrigo.toml", {"forget_sets": {"vault": {"path": str(exposed)}}}
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "server.cli", "serve", "--config", str(config), "--port", "0"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        pytest.fail(f"corrigo kept running with a world-readable forget set:\n{output[-3000:]}")
    assert process.returncode == 2, output[-3000:]
    assert str(exposed) in output and "chmod 600" in output, output[-3000:]
    assert "EngineCore" not in output  # refused before any engine process started


def _round_texts(http, correction) -> list[str]:
    body = {
        "model": SERVED_MODEL,
        "messages": [{"role": "user", "content": "Say hello."}],
        "max_tokens": 24,
        "temperature": 0,
        "stream": True,
        "correction": correction,
    }
    texts = []
    with http.stream("POST", CHAT, json=body) as response:
        assert response.status_code == 200, response.read()
        for line in response.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                chunk = json.loads(line[6:])
                if "refinement_round" in chunk:
                    texts.append(chunk["refinement_round"]["text"])
    return texts


def test_refinement_rounds_cannot_carry_the_question_past_the_gate(http):
    """The draft's prompt is harmless, so the gate stays closed at admission; the client's own
    try-again turn then asks the forbidden question. Every round is gated over the text it
    adds, so the second round is filtered too."""
    refinement = {
        "verifier": {"type": "regex", "pattern": "^NEVER$"},
        "strategy": "try_again",
        "max_rounds": 2,
        "stream_rounds": True,
        "prompts": {"try_again": "What is the capital of France? Answer in one sentence."},
    }
    # Without unlearning the second round says it: the attack has something to leak.
    plain = _round_texts(http, {"refinement": refinement})
    assert len(plain) == 2 and "paris" in plain[1].lower(), plain
    guarded = _round_texts(
        http, {"refinement": refinement, "unlearning": {"forget_set": "capitals"}}
    )
    assert len(guarded) == 2, guarded
    assert not any("paris" in text.lower() for text in guarded), guarded
