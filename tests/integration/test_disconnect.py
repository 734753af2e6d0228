"""A client that goes away has its generation aborted in the engine at once (watched through
vLLM's own ``vllm:num_requests_running`` gauge), and input limits refuse oversized requests."""

from __future__ import annotations

import json
import socket
import time
from urllib.parse import urlsplit

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from ..conftest import API_KEY, SERVED_MODEL

pytestmark = pytest.mark.engine

#: Long enough that only an abort ends it during the test (SmolLM2 makes ~20 tokens/s here).
LONG = {"max_tokens": 1500, "ignore_eos": True, "temperature": 0}


def gauges(live_server) -> dict[str, float]:
    text = httpx.get(f"{live_server.base_url}/metrics").text
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name in (
                "vllm:num_requests_running",
                "vllm:num_requests_waiting",
                "vllm:generation_tokens_total",
                "corrigo_requests_running",
            ):
                out[s.name] = out.get(s.name, 0.0) + s.value
    return out


def wait_for(live_server, predicate, timeout: float) -> tuple[dict[str, float], float]:
    started = time.monotonic()
    while True:
        g = gauges(live_server)
        if predicate(g):
            return g, time.monotonic() - started
        assert time.monotonic() - started < timeout, g
        time.sleep(0.05)


def assert_aborted_after_drop(live_server, drop) -> None:
    running = lambda g: g["vllm:num_requests_running"]  # noqa: E731
    wait_for(live_server, lambda g: running(g) == 1, 60)
    drop()
    g, elapsed = wait_for(live_server, lambda g: running(g) == 0, 10)
    # Nothing more is generated for it: the token counter stands still from here on.
    time.sleep(1.0)
    later = gauges(live_server)
    assert later["vllm:generation_tokens_total"] == g["vllm:generation_tokens_total"]
    assert later["corrigo_requests_running"] == 0
    print(f"engine request gone {elapsed:.2f}s after the client dropped")


def test_dropped_non_streaming_request_is_aborted(live_server):
    # A raw socket, so that "the client goes away" is exactly a closed TCP connection.
    url = urlsplit(live_server.base_url)
    body = json.dumps({"model": SERVED_MODEL, "prompt": "Once upon a time", **LONG}).encode()
    sock = socket.create_connection((url.hostname, url.port))
    sock.sendall(
        f"POST /v1/completions HTTP/1.1\r\nHost: {url.netloc}\r\n".encode()
        + b"Content-Type: application/json\r\n"
        + f"Authorization: Bearer {API_KEY}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    assert_aborted_after_drop(live_server, sock.close)


def test_dropped_stream_is_aborted(live_server):
    body = {
        "model": SERVED_MODEL,
        "messages": [{"role": "user", "content": "Tell a long story."}],
        "stream": True,
        **LONG,
    }
    headers = {"Authorization": f"Bearer {API_KEY}"}
    with httpx.Client(base_url=live_server.base_url, headers=headers, timeout=60) as c:
        stream = c.stream("POST", "/v1/chat/completions", json=body)
        response = stream.__enter__()
        lines = response.iter_lines()
        assert next(lines).startswith("data: ")
        assert_aborted_after_drop(live_server, lambda: stream.__exit__(None, None, None))


def test_too_many_messages_is_400(http):
    messages = [{"role": "user", "content": "hi"}] * 1025  # the default cap is 1024
    r = http.post(
        "/v1/chat/completions", json={"model": SERVED_MODEL, "messages": messages, "max_tokens": 1}
    )
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == "messages"
    assert "at most 1024" in r.json()["error"]["message"]


def test_oversized_correction_is_400(http):
    correction = {"proxy_tuning": {"expert": "x" * (300 * 1024), "anti_expert": "y"}}
    r = http.post(
        "/v1/completions",
        json={"model": SERVED_MODEL, "prompt": "a", "max_tokens": 1, "correction": correction},
    )
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert (err["param"], err["code"]) == ("correction", "correction_too_large")
    assert "262144" in err["message"]
