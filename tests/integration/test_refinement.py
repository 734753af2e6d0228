"""Refinement through the OpenAI SDK against the real engine: every verifier and strategy,
streaming, HTTP verifiers against loopback servers, bad specs, metrics, disconnects."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from decoding.refinement.steps import split_steps
from decoding.refinement.votes import final_answer

pytestmark = pytest.mark.engine

ADD = [{"role": "user", "content": "What is 2 + 3? Reply with only the number."}]
NEVER = {"type": "regex", "pattern": "^ZZZ-never$", "full_match": True}


def chat(client, refinement, messages=ADD, **kw):
    kw.setdefault("max_tokens", 12)
    kw.setdefault("temperature", 0.0)
    return client.chat.completions.create(
        model="smollm2-135m-instruct",
        messages=messages,
        extra_body={"correction": {"refinement": refinement}},
        **kw,
    )


def report_of(response) -> dict:
    correction = response.model_extra["correction"]
    assert correction["plugins"] == ["refinement"]
    return correction["refinement"]


def check_consistent(response, report):
    """The answer is the chosen candidate's; usage counts every token the loop spent."""
    assert response.usage.completion_tokens == report["tokens"] > 0
    assert len(report["candidates"]) == report["rounds"]
    assert 0 <= report["chosen"] < report["rounds"]
    scores = [c["verdict"]["score"] for c in report["candidates"]]
    assert scores[report["chosen"]] == max(scores) >= scores[0]


def test_accepted_draft_is_one_round(client):
    response = chat(client, {"verifier": {"type": "regex", "pattern": r"\S"}})
    report = report_of(response)
    assert (report["rounds"], report["stop_reason"], report["accepted"]) == (1, "accepted", True)
    assert response.choices[0].message.content.strip()
    check_consistent(response, report)
    assert report["truth"] == {"draft": True, "chosen": True, "flip": None}


def test_try_again_with_an_answer_the_model_cannot_give(client):
    spec = {"verifier": {"type": "answer", "reference": 123456789, "mode": "numeric"}}
    response = chat(client, {**spec, "max_rounds": 3})
    report = report_of(response)
    assert report["strategy"] == "try_again"
    assert report["stop_reason"] in ("max_rounds", "repeated_answer")
    assert 2 <= report["rounds"] <= 3
    assert [c["step"] for c in report["candidates"]][:2] == ["draft", "retry"]
    assert report["chosen"] == 0  # nothing beats the draft: the draft is kept
    check_consistent(response, report)
    assert report["truth"]["flip"] is None


def test_best_of_n_with_json_schema(client):
    schema = {"type": "object", "required": ["sum"], "properties": {"sum": {"type": "integer"}}}
    messages = [{"role": "user", "content": 'Reply with JSON like {"sum": 5} for 2 + 3.'}]
    response = chat(
        client,
        {
            "verifier": {"type": "json_schema", "schema": schema},
            "strategy": "best_of_n",
            "max_rounds": 3,
            "temperature": 1.0,
        },
        messages=messages,
        max_tokens=20,
    )
    report = report_of(response)
    assert [c["step"] for c in report["candidates"]] == ["draft", "sample", "sample"]
    assert all(c["verdict"]["verifier"] == "json_schema" for c in report["candidates"])
    check_consistent(response, report)


def test_self_refine_and_decompose_run_their_rounds(client):
    for strategy in ("self_refine", "decompose"):
        response = chat(client, {"verifier": NEVER, "strategy": strategy, "max_rounds": 2})
        report = report_of(response)
        assert report["strategy"] == strategy
        assert report["stop_reason"] in ("max_rounds", "critic_satisfied")
        if report["stop_reason"] == "max_rounds":
            assert [c["step"] for c in report["candidates"]] == ["draft", "refine"]
        # Critiques and checks cost tokens too: more than the candidates themselves.
        assert report["tokens"] > sum(c["tokens"] for c in report["candidates"])
        check_consistent(response, report)


def _rounds(stream) -> tuple[list[dict], str, dict]:
    """A streamed refinement's rounds (with texts), answer and report."""
    chunks = list(stream)
    rounds = [
        c.model_extra["refinement_round"]
        for c in chunks
        if "refinement_round" in (c.model_extra or {})
    ]
    answer = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return rounds, answer, chunks[-1].model_extra["correction"]["refinement"]


LINES = [{"role": "user", "content": "Write the numbers 1, 2 and 3, one per line."}]
#: Accepts a prefix of one line only: the first failing step is the second line.
ONE_LINE = {"type": "regex", "pattern": "[^\\n]*", "full_match": True}


def test_localize_keeps_the_steps_before_the_first_failing_one(client):
    refinement = {
        "verifier": {"type": "regex", "pattern": "^ZZZ"},
        "strategy": "localize",
        "step_verifier": ONE_LINE,
        "max_rounds": 3,
        "stream_rounds": True,
    }
    rounds, answer, report = _rounds(chat(client, refinement, LINES, max_tokens=16, stream=True))
    assert [r["step"] for r in rounds] == ["draft", "local", "global"]
    draft, local = rounds[0]["text"], rounds[1]["text"]
    steps = split_steps(draft, "lines", 8)
    (localized,) = report["localize"]["rounds"]
    assert localized["steps"] == len(steps) and localized["winner"] in ("draft", "local", "global")
    failing = localized["first_failing_step"]
    assert len(localized["step_scores"]) == failing == min(2, len(steps))
    assert local.startswith("".join(steps[: failing - 1]))
    assert answer == rounds[report["chosen"]]["text"]
    # Unstreamed (greedy: the same rounds), the answer is the chosen candidate's whole text.
    plain = chat(client, {**refinement, "stream_rounds": False}, LINES, max_tokens=16)
    assert report_of(plain)["chosen"] == report["chosen"]
    assert plain.choices[0].message.content == answer


def test_localize_with_p_true_steps_and_aggregate_escalating(client):
    # localize's default step verifier is P(True) on this engine.
    report = report_of(chat(client, {"verifier": NEVER, "strategy": "localize"}, LINES))
    (localized,) = report["localize"]["rounds"]
    assert localized["step_scores"] and all(0 <= s <= 1 for s in localized["step_scores"])
    assert len(localized["step_scores"]) == localized["first_failing_step"]
    # aggregate: three samples; all disagreeing is below tau = 1, so try_again escalates.
    refinement = {
        "verifier": NEVER,
        "strategy": "aggregate",
        "samples": 3,
        "tau": 1.0,
        "escalate": "try_again",
        "max_rounds": 4,
        "temperature": 1.5,
        "stream_rounds": True,
    }
    messages = [{"role": "user", "content": "Write any six-digit number."}]
    rounds, answer, report = _rounds(chat(client, refinement, messages, seed=3, stream=True))
    vote = report["aggregate"]
    assert sum(n for _, n in vote["answers"]) == vote["samples"] == 3
    assert [r["step"] for r in rounds][:3] == ["draft", "sample", "sample"]
    if vote["agreement"] == 1.0:
        assert report["stop_reason"] == "agreement" and vote["escalated"] is None
    else:
        assert vote["escalated"] == "try_again" and rounds[3]["step"] == "retry"
    majority = rounds[vote["chosen_by_vote"]]
    assert final_answer(majority["text"]) == vote["majority"]
    assert answer == rounds[report["chosen"]]["text"]


def test_aggregate_returns_the_majority_and_p_true_sees_samples(client):
    refinement = {
        "verifier": {"type": "p_true", "threshold": 0.0, "samples": 2},
        "strategy": "aggregate",
        "samples": 3,
        "tau": 0.0,
        "temperature": 1.0,
    }
    response = chat(client, refinement, seed=1)
    report = report_of(response)
    assert report["stop_reason"] == "agreement" and report["rounds"] == 3
    assert report["chosen"] == report["aggregate"]["chosen_by_vote"]
    for candidate in report["candidates"]:
        details = candidate["verdict"]["details"]
        assert 0 < details["p_a"] < 1 and 0 < details["p_b"] < 1
    # P(True)'s two samples are generations too: usage counts them beyond the loop's rounds.
    assert response.usage.completion_tokens > report["tokens"]


def test_token_budget_stops_the_loop(client):
    response = chat(client, {"verifier": NEVER, "max_rounds": 4, "max_total_tokens": 14})
    report = report_of(response)
    assert report["stop_reason"] in ("token_budget", "repeated_answer")
    assert report["tokens"] <= 14


def test_p_true_reads_the_engine(client):
    response = chat(client, {"verifier": {"type": "p_true", "threshold": 0.0}})
    verdict = report_of(response)["candidates"][0]["verdict"]
    assert verdict["verifier"] == "p_true" and verdict["accepted"]
    details = verdict["details"]
    # " A" and " B" are among the 20 likeliest tokens after the True/False question.
    assert 0 < details["p_a"] < 1 and 0 < details["p_b"] < 1
    assert verdict["score"] == pytest.approx(
        details["p_a"] / (details["p_a"] + details["p_b"]), rel=1e-3
    )


def test_judge_on_this_engine(client):
    verdict = report_of(chat(client, {"verifier": {"type": "judge"}, "max_rounds": 1}))[
        "candidates"
    ][0]["verdict"]
    assert verdict["verifier"] == "judge" and verdict["details"]["judge"].strip()


@contextlib.contextmanager
def loopback(handle):
    """A loopback HTTP server whose POST handler is ``handle(path, body) -> (status, obj)``."""
    seen = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append((self.path, body, dict(self.headers)))
            status, answer = handle(self.path, body, len(seen))
            data = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", seen
    finally:
        server.shutdown()
        server.server_close()


def test_webhook_rejects_then_accepts_with_a_retry(client):
    def handle(path, body, count):
        if count == 1:
            return 503, {"error": "warming up"}  # retried
        if count == 2:
            return 200, {"accepted": False, "score": 0.25, "feedback": "Show your work."}
        return 200, {"accepted": True, "score": 0.9}

    with loopback(handle) as (url, seen):
        spec = {"type": "webhook", "url": f"{url}/verify", "metadata": {"task": 7}}
        response = chat(client, {"verifier": spec, "max_rounds": 3, "temperature": 0.8})
    report = report_of(response)
    assert [c["verdict"]["score"] for c in report["candidates"]] == [0.25, 0.9]
    assert report["chosen"] == 1 and report["stop_reason"] == "accepted"
    assert report["candidates"][0]["verdict"]["feedback"] == "Show your work."
    assert len(seen) == 3 and seen[0][0] == "/verify"
    body = seen[1][1]
    assert body["messages"] == ADD and body["metadata"] == {"task": 7}
    assert response.choices[0].message.content == body["candidate"] or len(seen) == 3
    assert seen[2][1]["candidate"] == response.choices[0].message.content
    assert "truth" not in report  # a webhook's opinion is not ground truth


def test_judge_on_a_remote_openai_compatible_server(client):
    def handle(path, body, count):
        assert path == "/v1/chat/completions"
        return 200, {
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "CORRECT."}}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12},
        }

    with loopback(handle) as (url, seen):
        spec = {"type": "judge", "url": f"{url}/v1", "model": "grader"}
        report = report_of(chat(client, {"verifier": spec}))
    assert report["accepted"] and report["rounds"] == 1
    request = seen[0][1]
    assert request["model"] == "grader" and "Response:" in request["messages"][0]["content"]


def test_python_tests_in_the_sandbox(client):
    messages = [
        {"role": "user", "content": "Write a Python function add(a, b) that returns a + b."}
    ]
    spec = {"type": "python_tests", "tests": ["assert add(2, 3) == 5", "assert add(-1, 1) == 0"]}
    report = report_of(chat(client, {"verifier": spec, "max_rounds": 2}, messages, max_tokens=48))
    for candidate in report["candidates"]:
        verdict = candidate["verdict"]
        assert verdict["verifier"] == "python_tests"
        if "total" in verdict["details"]:
            assert verdict["score"] == verdict["details"]["passed"] / 2


ESCAPE = "corrigo-sandbox-escape"
REPO = Path(__file__).resolve().parents[2]
HOSTILE = {
    "fork_bomb": "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass",
    "infinite_loop": "while True:\n    pass",
    "memory_hog": "x = bytearray(8 * 1024 ** 3)",
    "socket": "import socket\nsocket.create_connection(('127.0.0.1', 1), timeout=1)",
    # /tmp is the sandbox's own tmpfs (this write succeeds there); the repository is not writable.
    "write_outside": f"open('/tmp/{ESCAPE}', 'w').write('x')\nopen('{REPO}/{ESCAPE}', 'w').write('x')",
    "read_environ": "import os\nassert 'CORRIGO' not in open('/proc/1/environ').read()\nraise SystemExit(os.environ)",
}


def test_hostile_tests_are_contained_and_the_server_stays_healthy(client, http, live_server):
    """The request's tests run in the sandbox too: hostile ones through the whole server."""
    spec = {
        "all": [
            {"type": "python_tests", "tests": [code], "timeout": 4, "cpu_seconds": 2}
            for code in HOSTILE.values()
        ]
    }
    started = time.monotonic()
    report = report_of(chat(client, {"verifier": spec, "max_rounds": 1}, max_tokens=4))
    parts = report["candidates"][0]["verdict"]["parts"]
    assert [p["accepted"] for p in parts] == [False] * len(HOSTILE)
    assert time.monotonic() - started < 60
    assert http.get("/health").status_code == 200
    assert chat(client, {"verifier": {"type": "regex", "pattern": "."}}).choices
    assert not Path(f"/tmp/{ESCAPE}").exists() and not (REPO / ESCAPE).exists()


def post_stream(live_server, http, body) -> list[str]:
    """The raw SSE lines of a streamed request (the SDK hides comments)."""
    with http.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        return [line for line in response.iter_lines() if line]


def test_streaming_sends_keepalives_then_the_answer_then_the_report(live_server, http):
    body = {
        "messages": ADD,
        "max_tokens": 12,
        "temperature": 0.0,
        "stream": True,
        "stream_options": {"include_usage": True},
        "correction": {"refinement": {"verifier": NEVER, "max_rounds": 2}},
    }
    events = post_stream(live_server, http, body)
    assert events[-1] == "data: [DONE]"
    comments = [e for e in events if e.startswith(":")]
    data = [json.loads(e[6:]) for e in events if e.startswith("data: {")]
    assert comments, "keep-alive comments while the rounds ran"
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in data if c.get("choices"))
    report = data[-1]["correction"]["refinement"]
    assert data[-1]["choices"] == [] and report["rounds"] == 2
    usage = [c["usage"] for c in data if c.get("usage")]
    assert usage and usage[-1]["completion_tokens"] == report["tokens"]
    assert text.strip()


def test_streaming_each_round_through_the_sdk(client):
    stream = chat(client, {"verifier": NEVER, "max_rounds": 2, "stream_rounds": True}, stream=True)
    chunks = list(stream)
    rounds = [
        c.model_extra["refinement_round"]
        for c in chunks
        if "refinement_round" in (c.model_extra or {})
    ]
    assert [r["round"] for r in rounds] == [0, 1] and all("text" in r for r in rounds)
    answer = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    report = chunks[-1].model_extra["correction"]["refinement"]
    chosen = rounds[report["chosen"]]["text"]
    assert answer == chosen


def test_seeded_rounds_are_distinct_reproducible_draws(client):
    """A seeded request's k-th sequence is drawn with ``seed + k`` (as vLLM seeds the choices
    of ``n``): the retry equals a plain request for the same conversation at ``seed + 1``, not
    a replay of the request's own seed, which made every round reuse the same random draws."""
    temperature, seed = 1.3, 7
    stream = chat(
        client,
        {"verifier": NEVER, "max_rounds": 2, "stream_rounds": True, "temperature": temperature},
        stream=True,
        seed=seed,
    )
    rounds = [
        c.model_extra["refinement_round"]
        for c in stream
        if "refinement_round" in (c.model_extra or {})
    ]
    assert [r["step"] for r in rounds] == ["draft", "retry"]
    conversation = [
        *ADD,
        {"role": "assistant", "content": rounds[0]["text"]},
        {"role": "user", "content": "Incorrect. Please think again."},
    ]

    def plain(s: int) -> str:
        response = client.chat.completions.create(
            model="smollm2-135m-instruct",
            messages=conversation,
            max_tokens=12,
            temperature=temperature,
            seed=s,
        )
        return response.choices[0].message.content

    assert plain(seed) != plain(seed + 1)  # the seeds draw different answers here
    assert rounds[1]["text"] == plain(seed + 1)


@pytest.mark.parametrize(
    ("refinement", "param"),
    [
        ({"verifier": {"type": "nope"}}, "correction.refinement.verifier.type"),
        (
            {"verifier": {"type": "json_schema", "schema": {"type": "bogus"}}},
            "correction.refinement.verifier.schema",
        ),
        ({"verifier": NEVER, "max_rounds": 5}, "correction.refinement.max_rounds"),
        ({"verifier": NEVER, "strategy": "pray"}, "correction.refinement.strategy"),
        (
            {"verifier": NEVER, "strategy": "aggregate", "samples": 4, "max_rounds": 3},
            "correction.refinement.samples",
        ),
        (
            {"verifier": NEVER, "strategy": "aggregate", "escalate": "aggregate"},
            "correction.refinement.escalate",
        ),
        (
            {"verifier": NEVER, "strategy": "localize", "step_verifier": {"type": "nope"}},
            "correction.refinement.step_verifier.type",
        ),
        (
            {"verifier": {"type": "webhook", "url": "http://10.1.2.3/v"}},
            "correction.refinement.verifier.url",
        ),
    ],
)
def test_bad_specs_are_400_naming_the_field(client, refinement, param):
    with pytest.raises(openai.BadRequestError) as err:
        chat(client, refinement)
    assert err.value.body["param"] == param
    assert err.value.body["code"] == "invalid_correction"


def test_refinement_needs_chat_and_one_choice(client):
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(
            model="smollm2-135m-instruct",
            prompt="2 + 3 =",
            max_tokens=4,
            extra_body={"correction": {"refinement": {"verifier": NEVER}}},
        )
    assert err.value.body["param"] == "correction.refinement"
    with pytest.raises(openai.BadRequestError) as err:
        chat(client, {"verifier": NEVER}, n=2)
    assert err.value.body["param"] == "n"


def _samples(http) -> dict:
    text = http.get("/metrics").text
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def test_metrics_count_rounds_verdicts_and_flips(client, http):
    before = _samples(http)

    def handle(path, body, count):
        return 200, {"accepted": count > 1}

    # A webhook declared exact is ground truth: it rejects the draft and accepts the retry, an
    # incorrect -> correct flip.
    with loopback(handle) as (url, _):
        spec = {"type": "webhook", "url": url, "exact": True}
        report = report_of(chat(client, {"verifier": spec, "max_rounds": 2, "temperature": 0.8}))
    after = _samples(http)

    def delta(name, **labels):
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0) - before.get(key, 0)

    assert report["truth"] == {"draft": False, "chosen": True, "flip": "incorrect_to_correct"}
    assert delta("corrigo_refinement_rounds_count", strategy="try_again") == 1
    assert delta("corrigo_refinement_rounds_sum", strategy="try_again") == report["rounds"] == 2
    assert delta("corrigo_verifier_verdicts_total", verifier="webhook", verdict="rejected") == 1
    assert delta("corrigo_verifier_verdicts_total", verifier="webhook", verdict="accepted") == 1
    flips = "corrigo_refinement_flips_total"
    assert delta(flips, strategy="try_again", flip="incorrect_to_correct") == 1
    assert delta(flips, strategy="try_again", flip="correct_to_incorrect") == 0
    assert delta("corrigo_plugin_requests_total", plugin="refinement") == 1


def test_client_disconnect_aborts_the_rounds(live_server, http):
    body = {
        "messages": [{"role": "user", "content": "Write a long story about a dragon."}],
        "max_tokens": 300,
        "stream": True,
        "correction": {"refinement": {"verifier": NEVER, "max_rounds": 4, "temperature": 1.0}},
    }
    with http.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith(":"):
                break  # the rounds are running; hang up
    # 4 rounds of 300 tokens would take ~60 s here; aborted, the engine is idle at once.
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        running = [
            s.value
            for f in text_string_to_metric_families(http.get("/metrics").text)
            if f.name == "vllm:num_requests_running"
            for s in f.samples
        ]
        if running and sum(running) == 0:
            break
        time.sleep(0.5)
    else:
        pytest.fail("the engine still runs the rounds of a disconnected client")


def test_best_of_n_draws_every_candidate_within_rounds_times_max_tokens(client):
    # The draft is requested beside the samples; it reserves only what max_tokens lets it
    # take, so a budget of max_rounds x max_tokens holds all three (it used to hold none).
    refinement = {"verifier": NEVER, "strategy": "best_of_n", "max_rounds": 3,
                  "max_total_tokens": 36, "temperature": 1.0}  # fmt: skip
    report = report_of(chat(client, refinement, seed=0))
    assert report["rounds"] == 3 and report["stop_reason"] == "max_rounds"
    assert report["tokens"] <= 36
