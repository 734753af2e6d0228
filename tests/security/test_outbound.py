"""Hostile clients and outbound calls (webhook, judge): the allow-list, server-side judge
credentials, and outbound failures that say nothing about the network.

The session server allows ``http://127.0.0.1:`` (any port there) and
``http://HOOK_HOST:HOOK_PORT/hooks`` (tests/conftest.py); 127.0.0.3 is a loopback address no
entry names, so a listener there is a host outside the allow-list.
"""

from __future__ import annotations

import httpx
import pytest

from ..conftest import HOOK_HOST, HOOK_PORT, JUDGE_KEY, JUDGE_PORT, SERVED_MODEL
from ..support import free_port
from .support import LoopbackListener

pytestmark = pytest.mark.engine

ADD = [{"role": "user", "content": "What is 2 + 3? Reply with only the number."}]
OUTSIDE = "127.0.0.3"
URL_PARAM = "correction.refinement.verifier.url"
#: What an OpenAI-compatible judge answers.
CORRECT = {
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "CORRECT."}}],
    "usage": {"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12},
}


def refine(http: httpx.Client, verifier: dict, request_id: str | None = None) -> httpx.Response:
    body = {
        "model": SERVED_MODEL,
        "messages": ADD,
        "max_tokens": 4,
        "temperature": 0.0,
        "correction": {"refinement": {"verifier": verifier, "max_rounds": 1}},
    }
    headers = {"X-Request-Id": request_id} if request_id else {}
    return http.post("/v1/chat/completions", json=body, headers=headers)


def webhook(url: str, **extra) -> dict:
    return {"type": "webhook", "url": url, "retries": 0, "timeout": 2, **extra}


def draft_verdict(response: httpx.Response) -> dict:
    assert response.status_code == 200, response.text
    return response.json()["correction"]["refinement"]["candidates"][0]["verdict"]


def test_userinfo_and_host_tricks_reach_no_other_host(http):
    with LoopbackListener(host=OUTSIDE) as outside:
        port = outside.port
        for url in [
            f"http://127.0.0.1:@{OUTSIDE}:{port}/",
            f"http://127.0.0.1:{port}@{OUTSIDE}:{port}/",
            f"http://127.0.0.1:x@{OUTSIDE}:{port}/hooks",
            f"http://{HOOK_HOST}:{HOOK_PORT}@{OUTSIDE}:{port}/hooks",
            f"http://127.0.0.1:{port}\\@{OUTSIDE}:{port}/",
        ]:
            response = refine(http, webhook(url))
            assert response.status_code == 400, url
            assert response.json()["error"]["param"] == URL_PARAM
    assert outside.connections == []


def test_paths_outside_the_entry_reach_nothing_and_allowed_ones_are_sent_normalised(http):
    base = f"http://{HOOK_HOST}:{HOOK_PORT}"
    with LoopbackListener(host=HOOK_HOST, bind_port=HOOK_PORT) as hook:
        for path in [
            "/hooks/../admin",
            "/hooks/%2e%2e/admin",
            "/hooks//../admin",
            "/hooksadmin",
            "/hooks/..%2fadmin",
            "/hooks/..;/admin",
            "/HOOKS",
        ]:
            response = refine(http, webhook(base + path))
            assert response.status_code == 400, path
            assert response.json()["error"]["param"] == URL_PARAM
        assert hook.connections == []
        url = f"HTTP://{HOOK_HOST}:{HOOK_PORT}/hooks/a/./b/../%7Eme"
        verdict = draft_verdict(refine(http, webhook(url)))
    assert verdict["accepted"]
    assert [c.head.split(b"\r\n")[0] for c in hook.connections] == [b"POST /hooks/a/~me HTTP/1.1"]


def test_clients_cannot_name_server_environment_variables(http):
    messages = set()
    with LoopbackListener(body=CORRECT) as judge:
        for name in ["HOME", "PATH", "CORRIGO_NO_SUCH_VARIABLE_4711"]:
            spec = {"type": "judge", "url": f"{judge.url}/v1", "api_key_env": name}
            response = refine(http, spec)
            assert response.status_code == 400, response.text
            error = response.json()["error"]
            assert error["param"] == "correction.refinement.verifier.api_key_env"
            messages.add(error["message"].replace(name, "NAME"))
    assert judge.connections == []
    assert len(messages) == 1  # whether a variable exists makes no difference


def test_a_configured_judge_sends_its_server_side_key(http):
    with LoopbackListener(host=HOOK_HOST, bind_port=JUDGE_PORT, body=CORRECT) as judge:
        response = refine(http, {"type": "judge", "judge": "grader"})
    verdict = draft_verdict(response)
    assert verdict["accepted"] and verdict["verifier"] == "judge"
    (connection,) = judge.connections
    head = connection.head.decode()
    assert head.startswith("POST /v1/chat/completions ")
    assert f"\r\nauthorization: Bearer {JUDGE_KEY}\r\n" in head.replace("Authorization", "authorization")
    assert JUDGE_KEY not in response.text
    # A client may not point a configured judge elsewhere, nor name one that does not exist.
    response = refine(http, {"type": "judge", "judge": "grader", "url": "http://127.0.0.1:9/v1"})
    assert response.status_code == 400
    response = refine(http, {"type": "judge", "judge": "nope"})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "correction.refinement.verifier.judge"
    assert "grader" in error["message"]


def test_outbound_failures_look_alike_and_are_logged(http, live_server):
    closed = free_port()  # nothing listens there
    with (
        LoopbackListener(status=404) as not_found,
        LoopbackListener(status=200, body=["not", "an", "object"]) as odd,
        LoopbackListener(mode="close") as closing,
        LoopbackListener(mode="hang") as hanging,
        LoopbackListener(host=OUTSIDE) as target,
        LoopbackListener(status=302, headers={"Location": f"http://{OUTSIDE}:1/"}) as redirect,
    ):
        redirect.headers["Location"] = f"{target.url}/"
        urls = {
            "refused": f"http://127.0.0.1:{closed}/",
            "404": not_found.url,
            "not-an-object": odd.url,
            "closed": closing.url,
            "timeout": hanging.url,
            "redirect": redirect.url,
        }
        errors = {}
        for name, url in urls.items():
            request_id = f"outbound-probe-{name}"
            response = refine(http, webhook(url, timeout=1), request_id)
            verdict = draft_verdict(response)
            assert not verdict["accepted"]
            errors[name] = verdict["details"]["error"].replace(request_id, "<id>")
            text = response.text
            port = url.rsplit(":", 1)[1]
            assert f"127.0.0.1:{port}" not in text and "Error" not in text, text
        spec = {"type": "judge", "url": f"http://127.0.0.1:{closed}/v1"}
        judge = refine(http, spec, "judge-probe")
    assert target.connections == []  # the redirect was not followed
    assert len(set(errors.values())) == 1, errors
    message = next(iter(errors.values()))
    assert message == "the webhook verifier failed; see the server log for request <id>"
    judge_error = draft_verdict(judge)["details"]["error"]
    assert judge_error == "the judge verifier failed; see the server log for request judge-probe"
    assert f"127.0.0.1:{closed}" not in judge.text
    # The details are in the server's log, under the request id.
    log = live_server.log()
    for name, url in urls.items():
        lines = [line for line in log.splitlines() if f"outbound-probe-{name}" in line]
        assert any(url.split("//")[1] in line for line in lines), (name, lines)


def test_retries_and_timeouts_are_bounded(http):
    for key, value in [("timeout", 61), ("retries", 6)]:
        response = refine(http, webhook("http://127.0.0.1:9/", **{key: value}))
        assert response.status_code == 400
        assert response.json()["error"]["param"] == f"correction.refinement.verifier.{key}"
