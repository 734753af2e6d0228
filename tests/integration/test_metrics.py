"""/metrics serves Prometheus text with vLLM's vllm:* series and corrigo's corrigo_* series."""

from __future__ import annotations

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from ..conftest import SERVED_MODEL

pytestmark = pytest.mark.engine


def scrape(live_server) -> dict[str, list]:
    # Scraped as Prometheus does: no credentials, no redirects.
    r = httpx.get(f"{live_server.base_url}/metrics", follow_redirects=False)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    return {f.name: f.samples for f in text_string_to_metric_families(r.text)}


def value(samples, name, **labels) -> float:
    return sum(s.value for s in samples if s.name == name and labels.items() <= s.labels.items())


def test_metrics_count_requests_tokens_and_latency(live_server, client):
    before = scrape(live_server)
    ok = dict(model=SERVED_MODEL, endpoint="chat_completions")
    base_200 = value(
        before.get("corrigo_requests", []), "corrigo_requests_total", status="200", **ok
    )
    base_404 = value(before.get("corrigo_requests", []), "corrigo_requests_total", status="404")
    base_tokens = value(
        before.get("corrigo_generated_tokens", []), "corrigo_generated_tokens_total", **ok
    )
    base_ttft = value(
        before.get("corrigo_time_to_first_token_seconds", []),
        "corrigo_time_to_first_token_seconds_count",
        **ok,
    )

    messages = [{"role": "user", "content": "Count to three."}]
    full_length = {"ignore_eos": True}  # vLLM's extension: generate exactly max_tokens
    client.chat.completions.create(
        model=SERVED_MODEL, messages=messages, max_tokens=5, temperature=0, extra_body=full_length
    )
    list(
        client.chat.completions.create(
            model=SERVED_MODEL, messages=messages, max_tokens=7, stream=True, extra_body=full_length
        )
    )
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="missing", messages=messages, max_tokens=1)

    after = scrape(live_server)
    requests = after["corrigo_requests"]
    assert value(requests, "corrigo_requests_total", status="200", **ok) == base_200 + 2
    assert value(requests, "corrigo_requests_total", status="404") == base_404 + 1
    tokens = value(after["corrigo_generated_tokens"], "corrigo_generated_tokens_total", **ok)
    assert tokens - base_tokens == 5 + 7
    ttft = after["corrigo_time_to_first_token_seconds"]
    assert value(ttft, "corrigo_time_to_first_token_seconds_count", **ok) == base_ttft + 1
    duration = after["corrigo_request_duration_seconds"]
    assert value(duration, "corrigo_request_duration_seconds_count", **ok) >= 2
    assert value(duration, "corrigo_request_duration_seconds_sum", **ok) > 0


def test_vllm_series_sit_beside_ours(live_server, client):
    client.completions.create(model=SERVED_MODEL, prompt="Hello", max_tokens=3)
    families = scrape(live_server)
    assert any(name.startswith("vllm:") for name in families)
    generation = families["vllm:generation_tokens"]
    assert value(generation, "vllm:generation_tokens_total", model_name=SERVED_MODEL) > 0
    running = families["vllm:num_requests_running"]
    assert value(running, "vllm:num_requests_running") == 0
