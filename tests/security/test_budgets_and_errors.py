"""Hostile clients against the server's caps and error handling, through the real server.

- counts sent as strings or floats (``"n": "5"``) are capped as the integers vLLM makes of them;
- verifier trees are capped in size, depth and costly parts; a refinement's engine calls are
  budgeted and the loop stops with a ``stop_reason`` when they run out; budgets above the
  server's maximums are a 400;
- deep JSON, deep verifier nesting, huge or deeply nested test code: a 400 with the OpenAI
  error object, never a 500 or a stack trace;
- POST bodies must be ``application/json`` (415 otherwise: no form posts from a web page).
"""

from __future__ import annotations

import pytest

from ..conftest import SERVED_MODEL
from .support import MAX_PROBE_SECONDS, LoopProbe

pytestmark = pytest.mark.engine

MESSAGES = [{"role": "user", "content": "What is 2 + 3? Reply with only the number."}]
NEVER = {"type": "regex", "pattern": "^ZZZ-never$", "full_match": True}


def assert_error(response, status: int, param=None, code=None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert "Traceback" not in response.text and "File \"" not in response.text
    if param is not None:
        assert (error["param"] or "").startswith(param), error
    if code is not None:
        assert error["code"] == code, error
    return error


def chat(http, **body):
    return http.post(
        "/v1/chat/completions",
        json={"model": SERVED_MODEL, "messages": MESSAGES, "max_tokens": 4, **body},
    )


def refine(http, verifier, max_tokens=8, sampling=None, **refinement):
    return chat(
        http,
        max_tokens=max_tokens,
        **(sampling or {"temperature": 0.0}),
        correction={"refinement": {"verifier": verifier, **refinement}},
    )


# -- counts in any JSON type -------------------------------------------------------------------


@pytest.mark.parametrize("n", ["5", 5.0, "100000"])
def test_n_as_a_string_or_float_is_capped(http, n):
    # The session server allows n <= 4 (tests/conftest.py).
    assert_error(chat(http, n=n), 400, param="n")


def test_n_as_an_integral_float_within_the_cap_still_works(http):
    r = chat(http, n=2.0)
    assert r.status_code == 200 and len(r.json()["choices"]) == 2


def test_prompt_lists_are_capped(http):
    r = http.post(
        "/v1/completions",
        json={"model": SERVED_MODEL, "prompt": ["a"] * 65, "max_tokens": 1},
    )
    assert_error(r, 400, param="prompt")


# -- verifier trees and the refinement budget --------------------------------------------------


def test_verifier_tree_size_depth_and_costly_parts_are_capped(http):
    wide = {"any": [NEVER] * 40}
    assert_error(refine(http, wide), 400, param="correction.refinement.verifier")
    deep = NEVER
    for _ in range(6):
        deep = {"all": [deep]}
    assert_error(refine(http, deep), 400, param="correction.refinement.verifier")
    costly = {"all": [{"type": "p_true"}] * 9}
    error = assert_error(refine(http, costly), 400, param="correction.refinement.verifier")
    assert "costly" in error["message"]


def test_deep_verifier_nesting_is_a_400_not_a_500(http):
    deep = NEVER
    for _ in range(25):  # within the body's depth cap, far beyond the tree's
        deep = {"all": [deep]}
    assert_error(refine(http, deep), 400, param="correction.refinement.verifier")


@pytest.mark.parametrize(
    ("field", "value"),
    [("max_engine_calls", 100000), ("max_sandbox_seconds", 1e9), ("max_seconds", 1e9)],
)
def test_budgets_above_the_server_maximum_are_a_400(http, field, value):
    r = refine(http, NEVER, **{field: value})
    assert_error(r, 400, param=f"correction.refinement.{field}")


def test_the_engine_call_budget_stops_the_loop(http):
    # Sampled, so that the retry is not the draft again (greedy, whether it is depends on the
    # engine's dtype): a repeated answer would end the loop before the budget does.
    sampling = {"temperature": 1.0, "seed": 11}
    r = refine(
        http, NEVER, 16, sampling, max_rounds=4, max_engine_calls=2, strategy="try_again"
    )
    assert r.status_code == 200, r.text
    report = r.json()["correction"]["refinement"]
    assert report["rounds"] == 2 and report["stop_reason"] == "engine_call_budget", report


def test_verifier_forwards_count_as_engine_calls(http):
    verifier = {"all": [NEVER, {"type": "p_true"}]}
    r = refine(http, verifier, max_rounds=4, max_engine_calls=3, strategy="try_again")
    assert r.status_code == 200, r.text
    report = r.json()["correction"]["refinement"]
    # draft + its p_true forward, retry + its forward refused: two rounds, then the stop.
    assert report["stop_reason"] == "engine_call_budget", report
    assert report["rounds"] == 2


# -- 400, never 500 ----------------------------------------------------------------------------


def test_deep_json_body_is_a_400(http):
    # Deep enough for json's RecursionError, few enough containers to be parsed.
    body = b'{"model": "x", "messages": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"
    r = http.post(
        "/v1/chat/completions", content=body, headers={"content-type": "application/json"}
    )
    assert_error(r, 400, code="invalid_json")


def test_moderately_deep_json_is_refused_by_the_depth_check(http):
    nested: object = "x"
    for _ in range(200):
        nested = [nested]
    error = assert_error(chat(http, user=nested), 400, code="invalid_json")
    assert "deeper than" in error["message"]


@pytest.mark.parametrize("value", [b"[]", b"0"], ids=["containers", "numbers"])
def test_many_tiny_values_are_refused_before_parsing(http, live_server, value):
    body = b'{"model": "x", "prompt": [' + (value + b",") * 300_000 + value + b"]}"
    with LoopProbe(live_server.base_url) as probe:
        r = http.post("/v1/completions", content=body, headers={"content-type": "application/json"})
    assert_error(r, 413, code="request_too_large")
    assert "JSON values" in r.json()["error"]["message"]
    assert probe.worst < MAX_PROBE_SECONDS


def test_deep_schema_is_a_400(http):
    schema: dict = {"type": "integer"}
    for _ in range(40):  # within the body's depth cap, beyond the schema's
        schema = {"items": schema}
    r = refine(http, {"type": "json_schema", "schema": schema})
    assert_error(r, 400, param="correction.refinement.verifier.schema")


@pytest.mark.parametrize(
    "tests",
    [
        ["-" * 100_000 + "1"],  # compile: MemoryError / RecursionError
        ["assert True\n" * 3000],  # over the byte cap
    ],
)
def test_huge_or_deep_test_code_is_a_400(http, tests):
    r = refine(http, {"type": "python_tests", "tests": tests})
    assert_error(r, 400, param="correction.refinement.verifier")


# -- media type --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [{}, {"content-type": "text/plain"}, {"content-type": "application/x-www-form-urlencoded"}],
)
def test_post_bodies_must_be_application_json(http, headers):
    body = b'{"model": "%s", "prompt": "a", "max_tokens": 1}' % SERVED_MODEL.encode()
    r = http.post("/v1/completions", content=body, headers=headers)
    assert_error(r, 415, code="unsupported_media_type")


def test_application_json_with_a_charset_is_fine(http):
    body = b'{"model": "%s", "prompt": "a", "max_tokens": 1}' % SERVED_MODEL.encode()
    r = http.post(
        "/v1/completions", content=body, headers={"content-type": "application/json; charset=utf-8"}
    )
    assert r.status_code == 200, r.text
