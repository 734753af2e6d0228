"""Hostile clients against client patterns, JSON Schemas and templates, through the real server.

- a JSON Schema ``$ref`` to a URL or a file is refused before anything is fetched (a loopback
  listener records no connection, the file's content never comes back);
- a pattern that backtracks for seconds with Python's ``re`` leaves the event loop free (a
  concurrent /health probe stays fast) and the request answers promptly;
- patterns RE2 cannot run and templates with format specs or attribute access are a 400.
"""

from __future__ import annotations

import time

import pytest

from ..conftest import SERVED_MODEL
from .support import MAX_PROBE_SECONDS, LoopbackListener, LoopProbe

pytestmark = pytest.mark.engine

MESSAGES = [{"role": "user", "content": "Say hello to the world in one short sentence."}]
MARKER = "corrigo-secret-file-marker-5f1c"
#: Exponential backtracking with Python's re on any text without \x01: about 2**30 steps at each
#: of its positions (a {1,19} version took 1.6 s on 80 characters), so a match on the event loop
#: would block it for hours, far beyond MAX_PROBE_SECONDS.
EVIL = r"(?s)(?:.|.){1,30}\x01"


def refine(http, verifier, **refinement):
    body = {
        "model": SERVED_MODEL,
        "messages": MESSAGES,
        "max_tokens": 24,
        "temperature": 0.0,
        "correction": {"refinement": {"verifier": verifier, **refinement}},
    }
    return http.post("/v1/chat/completions", json=body)


def assert_400(response, param_prefix: str) -> dict:
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"].startswith(param_prefix), error
    assert "Traceback" not in response.text
    return error


def test_schema_ref_to_a_url_is_refused_without_a_connection(http):
    with LoopbackListener(body={"const": "never"}) as remote:
        schema = {"properties": {"a": {"$ref": f"{remote.url}/schema.json"}}}
        r = refine(http, {"type": "json_schema", "schema": schema}, max_rounds=1)
        time.sleep(0.2)
        assert remote.connections == []
    error = assert_400(r, "correction.refinement.verifier.schema.properties.a.$ref")
    assert "locally only" in error["message"]


def test_schema_ref_to_a_file_is_refused_and_its_content_never_returned(http, tmp_path):
    secret = tmp_path / "secret.json"
    secret.write_text(f'{{"const": "{MARKER}"}}')
    schema = {"$ref": secret.as_uri()}
    r = refine(http, {"type": "json_schema", "schema": schema}, max_rounds=1)
    assert_400(r, "correction.refinement.verifier.schema.$ref")
    assert MARKER not in r.text


def test_schema_ref_to_a_hanging_host_does_not_stall_the_server(http, live_server):
    with LoopbackListener(mode="hang") as remote, LoopProbe(live_server.base_url) as probe:
        schema = {"items": {"$ref": f"{remote.url}/s.json"}}
        r = refine(http, {"type": "json_schema", "schema": schema}, max_rounds=1)
    assert r.status_code == 400, r.text
    assert remote.connections == []
    assert probe.worst < MAX_PROBE_SECONDS, probe.latencies


@pytest.mark.parametrize("strategy", ["try_again", "best_of_n"])
def test_an_evil_pattern_does_not_block_the_event_loop(http, live_server, strategy):
    with LoopProbe(live_server.base_url) as probe:
        started = time.monotonic()
        r = refine(
            http,
            {"all": [{"type": "regex", "pattern": EVIL}, {"type": "answer", "reference": "x",
                                                          "extract": EVIL}]},
            strategy=strategy,
            max_rounds=2,
        )
        elapsed = time.monotonic() - started
    assert r.status_code == 200, r.text
    assert probe.worst < MAX_PROBE_SECONDS, probe.latencies
    assert elapsed < 30


@pytest.mark.parametrize("pattern", [r"(a)\1", r"(?=a)a", r"(?<!a)b"])
def test_patterns_re2_cannot_run_are_a_400(http, pattern):
    error = assert_400(
        refine(http, {"type": "regex", "pattern": pattern}), "correction.refinement.verifier"
    )
    assert "RE2" in error["message"]


@pytest.mark.parametrize(
    "prompt", ["{question:>300000000}", "{question.__class__}", "{answer!r}", "{0}"]
)
def test_template_specs_and_attribute_access_are_a_400(http, prompt):
    r = refine(http, {"type": "p_true", "prompt": prompt})
    assert_400(r, "correction.refinement.verifier.prompt")


def test_braces_in_the_question_are_not_a_template(http):
    body = {
        "model": SERVED_MODEL,
        "messages": [{"role": "user", "content": "Echo {answer} {0} {question.__class__}"}],
        "max_tokens": 8,
        "correction": {"refinement": {"verifier": {"type": "p_true"}, "max_rounds": 1}},
    }
    r = http.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    candidate = r.json()["correction"]["refinement"]["candidates"][0]
    assert "error" not in candidate["verdict"].get("details", {}), candidate
