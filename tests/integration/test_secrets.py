"""Secrets stay out of the server log: API keys (good and bad) are never written, and
correction payloads are not logged at info level (the session server runs at info)."""

from __future__ import annotations

import httpx
import pytest

from ..conftest import API_KEY, SERVED_MODEL

pytestmark = pytest.mark.engine

BAD_KEY = "sk-bad-key-7f3a9c1e5b"
MARKER = "forget-me-3b8e1d0a"


def test_api_keys_and_correction_payloads_are_not_logged(live_server, client):
    client.chat.completions.create(
        model=SERVED_MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=2
    )
    body = {"model": SERVED_MODEL, "prompt": "a", "max_tokens": 2}
    with httpx.Client(base_url=live_server.base_url, timeout=60) as c:
        second = c.post(
            "/v1/completions", json=body, headers={"Authorization": "Bearer second-key"}
        )
        assert second.status_code == 200
        bad = c.post("/v1/completions", json=body, headers={"Authorization": f"Bearer {BAD_KEY}"})
        assert bad.status_code == 401
        # A correction carrying a marker, valid JSON but refused by validation.
        corrected = {
            **body,
            "correction": {"proxy_tuning": {"expert": MARKER, "anti_expert": MARKER}},
        }
        r = c.post(
            "/v1/completions", json=corrected, headers={"Authorization": f"Bearer {API_KEY}"}
        )
        assert r.status_code == 400 and MARKER in r.text  # the client is told ...
        # ... and a correction far over the size limit.
        huge = {**body, "correction": {"unlearning": {"phrases": [MARKER] * 30000}}}
        r = c.post("/v1/completions", json=huge, headers={"Authorization": f"Bearer {API_KEY}"})
        assert r.status_code == 400
        # Valid payloads that run: a verifier carrying the marker, and a gated forget set.
        verified = {
            "model": SERVED_MODEL,
            "messages": [{"role": "user", "content": "Say hi."}],
            "max_tokens": 4,
            "correction": {
                "refinement": {"verifier": {"type": "regex", "pattern": MARKER}, "max_rounds": 2},
                "unlearning": {"forget_set": "capitals"},
            },
        }
        r = c.post(
            "/v1/chat/completions", json=verified, headers={"Authorization": f"Bearer {API_KEY}"}
        )
        assert r.status_code == 200, r.text
        assert r.json()["correction"]["refinement"]["rounds"]  # the verifier ran

    log = live_server.log()
    assert "POST /v1/completions" in log  # the log does record requests
    # The forget set's content (tests/data/forget_capitals.jsonl) never reaches the log either.
    for secret in (API_KEY, "second-key", BAD_KEY, MARKER, "Paris"):
        assert secret not in log, f"{secret!r} appears in the server log"
